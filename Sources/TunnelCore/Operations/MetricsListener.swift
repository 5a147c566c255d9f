import Glibc
import Logging
import Platform
import TunnelConfig

/// Serves `GET /metrics` over HTTP (`metrics = [HOST:]PORT` in `defaults`) with what
/// `tunneld status --format prometheus` prints, for a Prometheus scraper. Loopback clients
/// are admitted, others only when the `only_from` of `defaults` admits them; a client gets a
/// second to send its request.
final class MetricsListener: @unchecked Sendable {
    private let fd: Int32
    private let allowed: [AddressMatch]
    private let render: @Sendable () -> String
    private let logger: Logger

    /// Binds `address`; `render` makes the exposition text for each scrape.
    init(address: ListenAddress, allowed: [AddressMatch], logger: Logger, render: @escaping @Sendable () -> String) throws {
        fd = try Socket.listen(on: address, backlog: 16)
        // Served by a blocking accept loop on its own thread.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        self.allowed = allowed
        self.render = render
        self.logger = logger
    }

    func start() {
        DetachedThread.start(name: "metrics") { [self] in serve() }
    }

    /// Whether `peer` may read the metrics: a loopback address, or one `allowed` admits.
    static func admits(_ peer: String, allowed: [AddressMatch]) -> Bool {
        guard let bytes = AccessControl.bytes(of: peer) else { return false }
        let isLoopback = bytes.count == 4 ? bytes[0] == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1]
        if isLoopback { return true }
        return allowed.contains { rule in
            guard case .network(let network, let prefix) = rule, network.count == bytes.count else { return false }
            return AccessControl.prefix(network, bytes, prefix)
        }
    }

    private func serve() {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &length) }
            }
            // Not inherited by `ssh -G`, which a reload may start meanwhile.
            if client >= 0 { _ = fcntl(client, F_SETFD, FD_CLOEXEC) }
            if client < 0 {
                if [EINTR, ECONNABORTED].contains(errno) { continue }
                if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(errno) {
                    usleep(100_000)
                    continue
                }
                return
            }
            let peer = Socket.endpoint(of: storage)
            guard Self.admits(peer.host, allowed: allowed) else {
                logger.warning("metrics client refused: not loopback and not in the only_from of defaults", metadata: ["peer": "\(peer)"])
                close(client)
                continue
            }
            answer(client)
            close(client)
        }
    }

    /// Reads the request head (at most 4 KiB, within a second) and answers it.
    private func answer(_ client: Int32) {
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while request.count < 4096 && !request.ends(with: Array("\r\n\r\n".utf8)) && !request.ends(with: Array("\n\n".utf8)) {
            let count = recv(client, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            request += buffer[0..<count]
        }
        let line = String(decoding: request.prefix { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        let words = line.split(separator: " ")
        let reply: String
        if words.count >= 2, words[0] == "GET", words[1] == "/metrics" || words[1].hasPrefix("/metrics?") {
            let body = render()
            reply = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        } else {
            let body = "tunneld serves GET /metrics only\n"
            reply = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        }
        let bytes = Array(reply.utf8)
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { send(client, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { return }
            offset += sent
        }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool {
        count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix
    }
}
