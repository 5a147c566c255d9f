import Glibc
import Logging
import TunnelConfig

/// The SOCKS5 handshake of new clients of `type = SOCKS` services, on its own thread: each
/// client names its target; one that a service's `permit` allows goes on to the session pool
/// with that target, owed the CONNECT reply; anything else is answered with its SOCKS reply
/// code and closed before any channel is opened. A client gets `handshakeTimeout` to finish.
final class SocksGate: @unchecked Sendable {
    static let handshakeTimeout: Duration = .seconds(10)

    private struct Negotiation {
        var connection: Connection
        var handshake = SocksHandshake()
        var deadline: ContinuousClock.Instant
    }

    private let pool: SessionPool
    private let logger: Logger
    private let wakeup: Wakeup
    private let inbox = Locked<[Connection]>([])

    init(pool: SessionPool, logger: Logger) throws {
        self.pool = pool
        self.logger = logger
        wakeup = try Wakeup()
    }

    /// Starts the gate's thread.
    func start() {
        DetachedThread.start(name: "socks") { [self] in run() }
    }

    /// Takes a newly accepted client of a SOCKS service.
    func admit(_ connection: Connection) {
        inbox.withLock { $0.append(connection) }
        wakeup.signal()
    }

    private func run() {
        var negotiations: [Negotiation] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        let beat = pool.watchdog?.join()
        while true {
            pool.watchdog?.beat(beat)
            let now = ContinuousClock.now
            for connection in inbox.withLock({ inbox in defer { inbox.removeAll() }; return inbox }) {
                negotiations.append(Negotiation(connection: connection, deadline: now + Self.handshakeTimeout))
            }
            negotiations.removeAll { negotiation in
                guard negotiation.deadline <= now else { return false }
                negotiation.connection.finish(.clientError("no SOCKS5 request within \(Int(Self.handshakeTimeout.components.seconds)) s"), logger: logger)
                return true
            }
            var set = [pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)]
            set += negotiations.map { pollfd(fd: $0.connection.input, events: Int16(POLLIN), revents: 0) }
            let timeout = negotiations.map(\.deadline).min().map { Socket.milliseconds(until: $0) } ?? -1
            _ = poll(&set, nfds_t(set.count), pool.watchdog?.bound(timeout) ?? timeout)
            if set[0].revents != 0 { wakeup.drain() }
            var finished: [Int] = []
            for index in negotiations.indices where set[index + 1].revents != 0 {
                if advance(&negotiations[index], buffer: &buffer) { finished.append(index) }
            }
            for index in finished.reversed() { negotiations.remove(at: index) }
        }
    }

    /// Reads what the client sent and acts on it. Returns true when the client has left the
    /// gate (handed on or closed).
    private func advance(_ negotiation: inout Negotiation, buffer: inout [UInt8]) -> Bool {
        let connection = negotiation.connection
        let read = buffer.withUnsafeMutableBytes { DescriptorIO.read(connection.input, into: $0) }
        let bytes: ArraySlice<UInt8>
        switch read {
        case .wouldBlock:
            return false
        case .endOfFile:
            connection.finish(.clientError("the client closed before its SOCKS5 request"), logger: logger)
            return true
        case .failed(let code):
            connection.finish(.clientError(String(cString: strerror(code))), logger: logger)
            return true
        case .bytes(let count):
            bytes = buffer[0..<count]
        }
        switch negotiation.handshake.feed(bytes) {
        case .needMore:
            return false
        case .send(let reply):
            return !send(reply, to: connection)
        case .refuse(let reply, let reason):
            _ = send(reply, to: connection)
            connection.finish(.clientError("SOCKS: \(reason)"), logger: logger)
            return true
        case .connect(let target, let reply, let leftover):
            guard send(reply, to: connection) else { return true }
            connection.target = Endpoint(host: target.host, port: target.port)
            let permit = connection.service.permit
            if !permit.isEmpty && !permit.contains(where: { $0.allows(host: target.host, port: target.port) }) {
                connection.isSocksReplyOwed = true
                connection.finish(.access("\(target) is not in permit"), logger: logger)
                return true
            }
            // Bytes that came with the request go up like any others, and count as such.
            leftover.withUnsafeBytes { connection.toServer.store($0) }
            connection.bytesUp += leftover.count
            connection.isSocksReplyOwed = true
            pool.dispatch(connection)
            return true
        }
    }

    /// Writes a handshake reply (a few bytes into an empty socket buffer). Returns false,
    /// having closed the client, if it could not.
    private func send(_ reply: [UInt8], to connection: Connection) -> Bool {
        guard !reply.isEmpty else { return true }
        let result = reply.withUnsafeBytes { DescriptorIO.write(connection.output, $0) }
        guard case .wrote(let count) = result, count == reply.count else {
            connection.finish(.clientError("the SOCKS client does not read its replies"), logger: logger)
            return false
        }
        return true
    }
}
