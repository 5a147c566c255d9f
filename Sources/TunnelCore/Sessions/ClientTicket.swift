import TunnelConfig

/// A client as it is handed over to the session pool, once: who it is, for which service,
/// where its channel goes, since when, and whom to tell when it ends. A value: whoever holds
/// the client's connection reads it and nobody rewrites it (the SOCKS gate hands the client
/// over anew, with a new ticket, once the client has named its target).
struct ClientTicket: Sendable {
    let peer: Endpoint
    let service: Service
    let stats: ServiceStats
    let acceptedAt: ContinuousClock.Instant
    /// Where its channel goes: the service's target, or the one a SOCKS client named.
    let target: Endpoint
    /// A SOCKS client waits for the reply to its CONNECT: success when the channel opens,
    /// else a failure code before it is closed.
    let isSocksClient: Bool
    /// What the client sent before it had a channel (after its SOCKS request), to go first.
    let early: [UInt8]
    /// Told once, after the connection's log line, how it ended (limits release their slot,
    /// a jump link learns why its server cannot be reached).
    let onFinish: (@Sendable (ConnectionOutcome) -> Void)?

    /// A ticket for a client of `service`, bound for the service's own target.
    init(peer: Endpoint, service: Service, stats: ServiceStats, acceptedAt: ContinuousClock.Instant = .now,
         onFinish: (@Sendable (ConnectionOutcome) -> Void)? = nil) {
        self.init(peer: peer, service: service, stats: stats, acceptedAt: acceptedAt, target: service.target,
                  isSocksClient: false, early: [], onFinish: onFinish)
    }

    private init(peer: Endpoint, service: Service, stats: ServiceStats, acceptedAt: ContinuousClock.Instant, target: Endpoint,
                 isSocksClient: Bool, early: [UInt8], onFinish: (@Sendable (ConnectionOutcome) -> Void)?) {
        self.peer = peer
        self.service = service
        self.stats = stats
        self.acceptedAt = acceptedAt
        self.target = target
        self.isSocksClient = isSocksClient
        self.early = early
        self.onFinish = onFinish
    }

    /// The same client, bound for `target` as its SOCKS request named it, owed the reply.
    func socks(target: Endpoint, early: [UInt8]) -> ClientTicket {
        ClientTicket(peer: peer, service: service, stats: stats, acceptedAt: acceptedAt, target: target,
                     isSocksClient: true, early: early, onFinish: onFinish)
    }

    /// The same client, and `onFinish` told how it ended.
    func finishing(_ onFinish: @escaping @Sendable (ConnectionOutcome) -> Void) -> ClientTicket {
        ClientTicket(peer: peer, service: service, stats: stats, acceptedAt: acceptedAt, target: target,
                     isSocksClient: isSocksClient, early: early, onFinish: onFinish)
    }
}
