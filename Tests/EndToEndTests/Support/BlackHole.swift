import Glibc

/// A target on 127.0.0.1 whose SYNs vanish, as a dead host's do: a listener with a backlog of
/// zero that never accepts, its queue filled by the helper itself. The SSH server's connect
/// to it hangs until the kernel gives up (about two minutes), so the channel open that asked
/// for it gets no answer for that long.
final class BlackHole {
    let port: UInt16
    private let listener: Int32
    private var fillers: [Int32] = []

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = TCP.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 0) == 0 else {
            close(fd)
            throw TCP.Failure(description: "black hole: \(String(cString: strerror(errno)))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        listener = fd
        port = UInt16(bigEndian: address.sin_port)
        // Fill the accept queue; once it is full, the kernel drops every further SYN.
        for _ in 0..<2 {
            let filler = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var target = TCP.loopback(port: port)
            _ = withUnsafePointer(to: &target) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(filler, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fillers.append(filler)
        }
        usleep(50_000)
    }

    deinit {
        fillers.forEach { close($0) }
        close(listener)
    }
}
