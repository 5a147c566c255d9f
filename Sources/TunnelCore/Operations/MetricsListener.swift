import Glibc
import Logging
import Platform
import TunnelConfig

/// Serves `GET /metrics` over HTTP (`metrics = [HOST:]PORT` or `metrics = unix:PATH` in
/// `defaults`) with what `tunneld status --format prometheus` prints, for a Prometheus
/// scraper. Loopback clients are admitted, others only when the `only_from` of `defaults`
/// admits them; a Unix socket is mode 0600, or 0660 for run_as's group, like the control
/// socket. Clients are served at once from one loop (`RequestServer`): each has a second to
/// send its whole request head, and at most 64 are held.
final class MetricsListener: @unchecked Sendable {
    /// Where the metrics are served.
    enum Place: Sendable, CustomStringConvertible {
        case tcp(ListenAddress)
        case unix(path: String, group: gid_t?, owner: uid_t?)

        var description: String {
            switch self {
            case .tcp(let address): return "\(address)"
            case .unix(let path, _, _): return "unix:\(path)"
            }
        }
    }

    private let fd: Int32
    private let events: EventPoll
    /// Where the metrics are served.
    let place: Place
    private let allowed: [AddressMatch]
    private let logger: Logger

    /// The longest request head read; a scraper's is a few hundred bytes.
    static let maximumRequest = 4096

    /// Binds `place`, before the switch to run_as so that a port below 1024 works; clients
    /// wait in the backlog until `start(render:)`.
    init(place: Place, allowed: [AddressMatch], logger: Logger) throws {
        events = try EventPoll(capacity: 64)
        switch place {
        case .tcp(let address):
            fd = try Socket.listen(on: address, backlog: 128)
        case .unix(let path, let group, let owner):
            fd = try ControlSocket.bindSocketFile(path, group: group, owner: owner, what: "metrics socket")
        }
        self.place = place
        self.allowed = allowed
        self.logger = logger
    }

    /// Starts serving; `render` makes the exposition text for each scrape.
    func start(render: @escaping @Sendable () -> String) {
        let limits = RequestServer.Limits(maximumRequest: Self.maximumRequest)
        let server = RequestServer(listening: fd, events: events, limits: limits, isWhole: Self.isWholeHead) { [allowed, logger, place] request, storage in
            if case .tcp = place {
                let peer = Socket.endpoint(of: storage)
                guard Self.admits(peer.host, allowed: allowed) else {
                    logger.warning("metrics client refused: not loopback and not in the only_from of defaults", metadata: ["peer": "\(peer)"])
                    return nil
                }
            }
            return Self.answer(request, render: render)
        }
        server.start(name: "metrics")
    }

    /// Stops serving; a Unix socket's file is removed.
    func close() {
        if case .unix(let path, _, _) = place { unlink(path) }
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
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

    /// Whether an HTTP request head has ended (a blank line).
    static func isWholeHead(_ request: [UInt8]) -> Bool {
        request.ends(with: Array("\r\n\r\n".utf8)) || request.ends(with: Array("\n\n".utf8))
    }

    /// The HTTP answer to a request head: the metrics for `GET /metrics`, else 404.
    static func answer(_ request: [UInt8], render: () -> String) -> [UInt8] {
        let line = String(decoding: request.prefix { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        let words = line.split(separator: " ")
        if words.count >= 2, words[0] == "GET", words[1] == "/metrics" || words[1].hasPrefix("/metrics?") {
            let body = render()
            return Array(("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body).utf8)
        }
        let body = "tunneld serves GET /metrics only\n"
        return Array(("HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body).utf8)
    }
}

extension GlobalSettings {
    /// Where `metrics` serves, if anywhere; a Unix socket goes to `group` like the control socket.
    func metricsPlace(group: gid_t?, owner: uid_t?) -> MetricsListener.Place? {
        if let path = metricsSocket { return .unix(path: path, group: group, owner: owner) }
        return metrics.map { .tcp($0) }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool {
        count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix
    }
}
