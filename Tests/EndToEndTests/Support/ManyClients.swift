import Foundation
import Glibc

/// Thousands of connections from one thread, so that the test side is never what a burst
/// waits on: `PolledEchoServer` echoes them all from one `poll` loop, `EchoBurst` opens them
/// all at once with non-blocking connects and checks that each gets exactly its own bytes back.
/// (`poll` over a few thousand descriptors costs microseconds per pass; that is fine for a
/// test, and keeps this target free of the daemon's own modules.)
enum ManyClients {
    /// Raises this process's soft descriptor limit to at least `count` (children started
    /// later, tunneld and sshd among them, inherit it). Returns the soft limit now.
    @discardableResult
    static func raiseDescriptorLimit(to count: Int) -> Int {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < rlim_t(count) {
            limit.rlim_cur = min(limit.rlim_max, rlim_t(count))
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(clamping: limit.rlim_cur)
    }

    static func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    static func monotonic() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// An echo target on 127.0.0.1 for thousands of clients at once: one thread, one `poll` loop,
/// each connection echoed and half-closed after its client half-closes.
final class PolledEchoServer: @unchecked Sendable {
    let port: UInt16
    private let listener: Int32
    private let stopPipe: [Int32]
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var accepted = 0
    private var isStopped = false

    init() throws {
        (listener, port) = try TCP.listen()
        ManyClients.setNonBlocking(listener)
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw TCP.Failure(description: "pipe: \(String(cString: strerror(errno)))") }
        stopPipe = ends
        Thread { [self] in run() }.start()
    }

    deinit { stop() }

    /// How many connections it accepted.
    var connectionCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return accepted
    }

    /// Closes the listener and every connection; returns once the loop has ended.
    func stop() {
        lock.lock()
        let wasStopped = isStopped
        isStopped = true
        lock.unlock()
        guard !wasStopped else { return }
        var byte: UInt8 = 1
        if write(stopPipe[1], &byte, 1) == 1 { done.wait() }
        close(stopPipe[1])
    }

    private struct Peer {
        var pending: [UInt8] = []
        var sentOffset = 0
        var clientEnded = false
    }

    private func run() {
        var peers: [Int32: Peer] = [:]
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        loop: while true {
            var fds = [pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for (fd, peer) in peers {
                fds.append(pollfd(fd: fd, events: Int16(peer.pending.isEmpty ? POLLIN : POLLOUT), revents: 0))
            }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 || errno == EINTR else { break }
            if fds[0].revents != 0 { break loop }
            for entry in fds.dropFirst(2) where entry.revents != 0 {
                let fd = entry.fd
                guard var peer = peers[fd] else { continue }
                var isOver = false
                if peer.pending.isEmpty {
                    let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                    if count > 0 {
                        peer.pending = Array(buffer[0..<count])
                        peer.sentOffset = 0
                    } else if count == 0 {
                        peer.clientEnded = true
                    } else if errno != EAGAIN && errno != EINTR {
                        isOver = true
                    }
                }
                if !peer.pending.isEmpty {
                    let sent = peer.pending.withUnsafeBytes { send(fd, $0.baseAddress! + peer.sentOffset, peer.pending.count - peer.sentOffset, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                    if sent > 0 {
                        peer.sentOffset += sent
                        if peer.sentOffset == peer.pending.count { peer.pending = [] }
                    } else if sent < 0 && errno != EAGAIN && errno != EINTR {
                        isOver = true
                    }
                }
                if peer.clientEnded && peer.pending.isEmpty {
                    shutdown(fd, Int32(SHUT_WR))
                    isOver = true
                }
                if isOver {
                    close(fd)
                    peers[fd] = nil
                } else {
                    peers[fd] = peer
                }
            }
            if fds[1].revents != 0 {
                while true {
                    let fd = accept(listener, nil, nil)
                    guard fd >= 0 else { break }
                    ManyClients.setNonBlocking(fd)
                    peers[fd] = Peer()
                    lock.lock()
                    accepted += 1
                    lock.unlock()
                }
            }
        }
        for fd in peers.keys { close(fd) }
        close(listener)
        close(stopPipe[0])
        done.signal()
    }
}

/// `count` clients of 127.0.0.1:`port` started at once from one thread: each connects
/// (non-blocking), sends its own `payload(index)`, half-closes, and reads until the end of
/// the stream; it passes when what came back is exactly what it sent.
struct EchoBurst {
    /// How one client ended.
    enum Ending: Equatable {
        case echoed
        /// The connect failed (refused, or the backlog overflowed and SYNs were dropped).
        case connectFailed(String)
        /// The stream ended or failed with other bytes than the client's own.
        case wrongBytes(received: Int)
        case reset(String)
        case timedOut(received: Int)
    }

    struct Result {
        var endings: [Ending]
        /// Seconds from the first connect to the last client's end.
        var seconds: Double
        /// Seconds from the first connect until every connect had completed (or failed).
        var connectSeconds: Double
        /// Seconds from the first connect to the first and the last whole echo.
        var firstEcho: Double?
        var lastEcho: Double?

        var echoed: Int { endings.filter { $0 == .echoed }.count }

        /// A few counted kinds of failure, for a failure message.
        var summary: String {
            var kinds: [String: Int] = [:]
            for ending in endings where ending != .echoed {
                let kind: String
                switch ending {
                case .echoed: kind = "echoed"
                case .connectFailed(let reason): kind = "connect failed (\(reason))"
                case .wrongBytes: kind = "wrong bytes"
                case .reset(let reason): kind = "reset (\(reason))"
                case .timedOut(let received): kind = received == 0 ? "timed out with nothing back" : "timed out part-way"
                }
                kinds[kind, default: 0] += 1
            }
            let failures = kinds.sorted { $0.value > $1.value }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            return String(format: "%d of %d echoed in %.2f s (connects done %.2f s, first echo %.2f s, last %.2f s)%@",
                          echoed, endings.count, seconds, connectSeconds, firstEcho ?? -1, lastEcho ?? -1,
                          failures.isEmpty ? "" : "; " + failures)
        }
    }

    /// Client `index`'s bytes: its number and a pattern derived from it, 16 to 64 bytes, so
    /// that bytes of one client that reached another would be seen.
    static func payload(_ index: Int) -> [UInt8] {
        var bytes = Array("<\(index)>".utf8)
        let length = 16 + index % 49
        var value = UInt32(truncatingIfNeeded: index &* 2_654_435_761)
        while bytes.count < length {
            value = value &* 1_103_515_245 &+ 12345
            bytes.append(UInt8(33 + (value >> 16) % 94))
        }
        return bytes
    }

    private struct Client {
        var fd: Int32
        var isConnected = false
        var sent = 0
        var received: [UInt8] = []
        var ending: Ending?
    }

    /// Runs the burst; a client not done within `timeout` seconds ends as timed out.
    static func run(port: UInt16, count: Int, timeout: Double) -> Result {
        let payloads = (0..<count).map(payload)
        let started = ManyClients.monotonic()
        var clients: [Client] = []
        clients.reserveCapacity(count)
        var address = TCP.loopback(port: port)
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else {
                clients.append(Client(fd: -1, ending: .connectFailed("socket: \(String(cString: strerror(errno)))")))
                continue
            }
            let status = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            var client = Client(fd: fd)
            if status == 0 {
                client.isConnected = true
            } else if errno != EINPROGRESS {
                client.ending = .connectFailed(String(cString: strerror(errno)))
                close(fd)
                client.fd = -1
            }
            clients.append(client)
        }
        var connectSeconds: Double?
        var firstEcho: Double?
        var lastEcho: Double?
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = started + timeout
        while ManyClients.monotonic() < deadline {
            var fds: [pollfd] = []
            var owners: [Int] = []
            var connecting = 0
            for (index, client) in clients.enumerated() where client.ending == nil {
                if !client.isConnected { connecting += 1 }
                let wantsOut = !client.isConnected || client.sent < payloads[index].count
                fds.append(pollfd(fd: client.fd, events: Int16(wantsOut ? POLLOUT : POLLIN), revents: 0))
                owners.append(index)
            }
            if connecting == 0 && connectSeconds == nil { connectSeconds = ManyClients.monotonic() - started }
            if fds.isEmpty { break }
            let wait = Int32(max(1, min(1000, (deadline - ManyClients.monotonic()) * 1000)))
            guard poll(&fds, nfds_t(fds.count), wait) > 0 else { continue }
            for (slot, entry) in fds.enumerated() where entry.revents != 0 {
                let index = owners[slot]
                var client = clients[index]
                let bytes = payloads[index]
                if !client.isConnected {
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(client.fd, SOL_SOCKET, SO_ERROR, &error, &length)
                    if error != 0 {
                        client.ending = .connectFailed(String(cString: strerror(error)))
                    } else {
                        client.isConnected = true
                    }
                }
                if client.ending == nil && client.isConnected && client.sent < bytes.count {
                    let sent = bytes.withUnsafeBytes { send(client.fd, $0.baseAddress! + client.sent, bytes.count - client.sent, Int32(MSG_NOSIGNAL)) }
                    if sent > 0 {
                        client.sent += sent
                        if client.sent == bytes.count { shutdown(client.fd, Int32(SHUT_WR)) }
                    } else if sent < 0 && errno != EAGAIN && errno != EINTR {
                        client.ending = .reset("send: \(String(cString: strerror(errno)))")
                    }
                } else if client.ending == nil && client.sent == bytes.count {
                    let received = recv(client.fd, &buffer, buffer.count, 0)
                    if received > 0 {
                        client.received += buffer[0..<received]
                        if client.received.count > bytes.count { client.ending = .wrongBytes(received: client.received.count) }
                    } else if received == 0 {
                        if client.received == bytes {
                            client.ending = .echoed
                            let now = ManyClients.monotonic() - started
                            if firstEcho == nil { firstEcho = now }
                            lastEcho = now
                        } else {
                            client.ending = .wrongBytes(received: client.received.count)
                        }
                    } else if errno != EAGAIN && errno != EINTR {
                        client.ending = client.received.isEmpty || client.received == Array(bytes.prefix(client.received.count))
                            ? .reset("recv: \(String(cString: strerror(errno)))")
                            : .wrongBytes(received: client.received.count)
                    }
                }
                if client.ending != nil {
                    close(client.fd)
                    client.fd = -1
                }
                clients[index] = client
            }
        }
        let seconds = ManyClients.monotonic() - started
        var endings: [Ending] = []
        for client in clients {
            if let ending = client.ending {
                endings.append(ending)
            } else {
                endings.append(client.isConnected ? .timedOut(received: client.received.count) : .connectFailed("timed out"))
                close(client.fd)
            }
        }
        return Result(endings: endings, seconds: seconds, connectSeconds: connectSeconds ?? seconds, firstEcho: firstEcho, lastEcho: lastEcho)
    }
}
