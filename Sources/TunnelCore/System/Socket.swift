import Glibc
import TunnelConfig

/// A failure of a socket call, with the call's name and `errno`'s text.
public struct SocketError: Error, CustomStringConvertible {
    public var function: String
    public var code: Int32
    public var description: String { "\(function): \(String(cString: strerror(code)))" }

    init(_ function: String, code: Int32 = errno) {
        self.function = function
        self.code = code
    }

    /// This machine ran out of descriptors or memory: not the peer's fault.
    var isLocalShortage: Bool { [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code) }
}

/// Thin wrappers over the POSIX socket calls the daemon makes; each returns a descriptor
/// it owns or throws `SocketError`.
enum Socket {
    /// Opens a listening TCP socket on `address` (numeric host), with `SO_REUSEADDR`, non-blocking.
    /// - `backlog`: completed connections the kernel holds until they are accepted. The
    ///   default is `SOMAXCONN` (4096), which the kernel caps at `net.core.somaxconn` (4096
    ///   since Linux 5.4): a burst of thousands of connects then waits in the kernel for the
    ///   listener's next pass. With the old 511, the connects past it overflowed the queue,
    ///   their handshakes were dropped and the clients were reset (about 200-300 of a burst
    ///   of 2,000 on loopback) or left retrying SYNs for seconds.
    static func listen(on address: ListenAddress, backlog: Int32 = SOMAXCONN) throws -> Int32 {
        var storage = try socketAddress(host: address.host, port: address.port)
        let fd = Glibc.socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        if storage.ss_family == sa_family_t(AF_INET6) {
            var v6only: Int32 = address.host == "::" ? 0 : 1
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &v6only, socklen_t(MemoryLayout<Int32>.size))
        }
        let length = storage.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(length)) }
        }
        guard bound == 0 else {
            let error = SocketError("bind", code: errno)
            Glibc.close(fd)
            throw error
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let error = SocketError("listen", code: errno)
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Accepts one client, non-blocking, with `TCP_NODELAY`. Returns `nil` when none is waiting.
    static func accept(from listener: Int32) throws -> (fd: Int32, peer: Endpoint)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.accept(listener, $0, &length)
                }
            }
            if fd >= 0 {
                setNonBlocking(fd)
                setNoDelay(fd)
                return (fd, endpoint(of: storage))
            }
            switch errno {
            case EINTR, ECONNABORTED: continue
            case EAGAIN, EWOULDBLOCK: return nil
            default: throw SocketError("accept")
            }
        }
    }

    /// Starts a non-blocking TCP connect to the numeric `host`:`port`. Returns the socket and
    /// whether it is connected already (else poll it for writing, then read `SO_ERROR`).
    static func startConnect(to host: String, port: UInt16) throws(SocketError) -> (fd: Int32, isConnected: Bool) {
        var storage: sockaddr_storage
        do {
            storage = try socketAddress(host: host, port: port)
        } catch {
            throw error as? SocketError ?? SocketError("inet_pton", code: EINVAL)
        }
        let fd = Glibc.socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        let length = storage.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(length)) }
        }
        if status == 0 { return (fd, true) }
        if errno == EINPROGRESS { return (fd, false) }
        let error = SocketError("connect")
        Glibc.close(fd)
        throw error
    }

    /// Sets `O_NONBLOCK` and `FD_CLOEXEC`.
    static func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    static func setNoDelay(_ fd: Int32) {
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Milliseconds from now to `deadline`, rounded up, at least 0, at most a day.
    static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32 {
        let remaining = deadline - ContinuousClock.now
        if remaining <= .zero { return 0 }
        let ms = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1
        return Int32(min(ms, 86_400_000))
    }

    private static func socketAddress(host: String, port: UInt16) throws -> sockaddr_storage {
        var storage = sockaddr_storage()
        func store<Address>(_ address: Address) {
            withUnsafeMutableBytes(of: &storage) { target in
                withUnsafeBytes(of: address) { target.copyMemory(from: $0) }
            }
        }
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else { throw SocketError("inet_pton", code: EINVAL) }
            store(address)
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw SocketError("inet_pton", code: EINVAL) }
            store(address)
        }
        return storage
    }

    /// The numeric local address and port of an IPv4 or IPv6 socket, or nil if it has none.
    static func localEndpoint(of fd: Int32) -> Endpoint? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard status == 0, storage.ss_family == sa_family_t(AF_INET) || storage.ss_family == sa_family_t(AF_INET6) else { return nil }
        return endpoint(of: storage)
    }

    /// Whether this machine has a route to the peer of the connected socket `fd` now: a UDP
    /// socket is connected to the same address, which looks the route up and sends nothing.
    static func hasRoute(toPeerOf fd: Int32) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard named == 0 else { return false }
        let probe = Glibc.socket(Int32(storage.ss_family), Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { return true }
        defer { Glibc.close(probe) }
        let connected = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(probe, $0, length) }
        }
        return connected == 0 || (errno != ENETUNREACH && errno != EHOSTUNREACH)
    }

    /// The numeric addresses configured on this machine's interfaces now.
    static func localAddresses() -> Set<String> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let list else { return [] }
        defer { freeifaddrs(list) }
        var addresses: Set<String> = []
        var entry: UnsafeMutablePointer<ifaddrs>? = list
        while let current = entry {
            entry = current.pointee.ifa_next
            guard let address = current.pointee.ifa_addr else { continue }
            let family = Int32(address.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            var storage = sockaddr_storage()
            let size = family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: size)) }
            addresses.insert(endpoint(of: storage).host)
        }
        return addresses
    }

    /// The numeric host and port of a socket address.
    static func endpoint(of storage: sockaddr_storage) -> Endpoint {
        var storage = storage
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if storage.ss_family == sa_family_t(AF_INET6) {
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
                    var host = String(cString: text)
                    if host.hasPrefix("::ffff:") && host.contains(".") { host.removeFirst(7) }
                    return Endpoint(host: host, port: UInt16(bigEndian: address.pointee.sin6_port))
                }
            }
        }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                var raw = address.pointee.sin_addr
                inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                return Endpoint(host: String(cString: text), port: UInt16(bigEndian: address.pointee.sin_port))
            }
        }
    }
}
