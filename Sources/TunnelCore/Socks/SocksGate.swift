import Glibc
import Logging
import Platform
import TunnelConfig

/// The SOCKS5 handshake of new clients of `type = SOCKS` services, on its own thread: each
/// client names its target; one that a service's `permit` allows goes on to the session pool
/// with that target, owed the CONNECT reply; anything else is answered with its SOCKS reply
/// code and closed before any channel is opened. A client gets `handshakeTimeout` to finish.
/// A pass of the loop costs the clients that sent something (epoll) and those whose time is
/// up, never all of them: every client has the same timeout, so the earliest deadline is the
/// oldest client's, and clients are kept in arrival order.
final class SocksGate: @unchecked Sendable {
    static let handshakeTimeout: Duration = .seconds(10)

    private struct Negotiation {
        var connection: Connection
        var handshake = SocksHandshake()
        var deadline: ContinuousClock.Instant
        var registration = EventPoll.Registration()
    }

    private let pool: SessionPool
    private let logger: Logger
    private let wakeup: Wakeup
    /// The wake-up pipe (token 0) and each client in its handshake (its arrival number).
    private let events: EventPoll
    private let inbox = Locked<[Connection]>([])

    init(pool: SessionPool, logger: Logger) throws {
        self.pool = pool
        self.logger = logger
        wakeup = try Wakeup()
        events = try EventPoll()
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

    private static let wakeupToken: UInt64 = 0

    private func run() {
        /// The clients in their handshake by arrival number, and the numbers in arrival order,
        /// hence deadline order, from `oldest` on (with numbers of clients gone since).
        var negotiations: [UInt64: Negotiation] = [:]
        var arrivals: [UInt64] = []
        var oldest = 0
        var nextToken: UInt64 = 1
        var wakeupRegistration = EventPoll.Registration()
        events.update(wakeup.readEnd, token: Self.wakeupToken, to: .readable, registration: &wakeupRegistration)
        var buffer = [UInt8](repeating: 0, count: 1024)
        var ready: [UInt64] = []
        let beat = pool.watchdog?.join()
        while true {
            pool.watchdog?.beat(beat)
            let now = ContinuousClock.now
            for connection in inbox.withLock({ inbox in defer { inbox.removeAll() }; return inbox }) {
                var negotiation = Negotiation(connection: connection, deadline: now + Self.handshakeTimeout)
                events.update(connection.input, token: nextToken, to: .readable, registration: &negotiation.registration)
                negotiations[nextToken] = negotiation
                arrivals.append(nextToken)
                nextToken += 1
            }
            while oldest < arrivals.count {
                guard var negotiation = negotiations[arrivals[oldest]] else {
                    oldest += 1
                    continue
                }
                guard negotiation.deadline <= now else { break }
                negotiations[arrivals[oldest]] = nil
                oldest += 1
                leave(&negotiation, closingWith: .clientError("no SOCKS5 request within \(Int(Self.handshakeTimeout.components.seconds)) s"))
            }
            if oldest > 1024 && oldest * 2 > arrivals.count {
                arrivals.removeFirst(oldest)
                oldest = 0
            }
            let timeout = arrivals.dropFirst(oldest).first.flatMap { negotiations[$0]?.deadline }.map { Socket.milliseconds(until: $0) } ?? -1
            ready.removeAll(keepingCapacity: true)
            events.wait(timeout: pool.watchdog?.bound(timeout) ?? timeout) { ready.append($0.token) }
            for token in ready {
                if token == Self.wakeupToken {
                    wakeup.drain()
                } else if var negotiation = negotiations[token] {
                    negotiations[token] = advance(&negotiation, buffer: &buffer) ? nil : negotiation
                }
            }
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
            return leave(&negotiation, closingWith: .clientError("the client closed before its SOCKS5 request"))
        case .failed(let code):
            return leave(&negotiation, closingWith: .clientError(String(cString: strerror(code))))
        case .bytes(let count):
            bytes = buffer[0..<count]
        }
        switch negotiation.handshake.feed(bytes) {
        case .needMore:
            return false
        case .send(let reply):
            guard send(reply, to: connection) else { return leave(&negotiation, closingWith: Self.deafClient) }
            return false
        case .refuse(let reply, let reason):
            _ = send(reply, to: connection)
            return leave(&negotiation, closingWith: .clientError("SOCKS: \(reason)"))
        case .connect(let target, let reply, let leftover):
            guard send(reply, to: connection) else { return leave(&negotiation, closingWith: Self.deafClient) }
            leave(&negotiation, closingWith: nil)
            let named = connection.handOver(to: connection.ticket.socks(target: Endpoint(host: target.host, port: target.port), early: Array(leftover)))
            let permit = named.service.permit
            if !permit.isEmpty && !permit.contains(where: { $0.allows(host: target.host, port: target.port) }) {
                named.finish(.access("\(target) is not in permit"), logger: logger)
                return true
            }
            pool.dispatch(named)
            return true
        }
    }

    private static let deafClient = ConnectionOutcome.clientError("the SOCKS client does not read its replies")

    /// Takes the client out of the gate's set (before a session loop waits on it, or its
    /// descriptor is closed and reused), then closes it with `outcome` if one is given.
    /// Returns true: the client has left the gate.
    @discardableResult
    private func leave(_ negotiation: inout Negotiation, closingWith outcome: ConnectionOutcome?) -> Bool {
        events.remove(negotiation.connection.input, registration: &negotiation.registration)
        if let outcome { negotiation.connection.finish(outcome, logger: logger) }
        return true
    }

    /// Writes a handshake reply (a few bytes into an empty socket buffer). Returns false if
    /// it could not.
    private func send(_ reply: [UInt8], to connection: Connection) -> Bool {
        guard !reply.isEmpty else { return true }
        let result = reply.withUnsafeBytes { DescriptorIO.write(connection.output, $0) }
        guard case .wrote(let count) = result, count == reply.count else { return false }
        return true
    }
}
