import SSHTransport
import TunnelConfig

/// The channel opens of one session: a queue, and at most one open under way, because
/// libssh2 1.10 keeps the state of an open in the session (a second open would complete the
/// first and return *its* channel).
///
/// Each client's open has its own deadline. When it passes, that client alone ends; the
/// open itself cannot be cancelled, so it stays under way, abandoned: a late confirmation's
/// channel is handed back to be freed, a late refusal is ignored. Nothing here decides
/// whether the session is alive: that is the keepalive's job, not one slow target's.
struct ChannelOpener {
    /// What an open is for.
    enum Request {
        case client(Connection)
        /// A channel open the server refuses at once, to learn that it is alive.
        case probe
        /// A channel to a service's target, closed at once: is the target up?
        case health(HealthCheck)
    }

    /// What progress produced, for the event loop to act on.
    enum Event {
        /// The client's channel is open.
        case opened(Connection, any TunnelChannel)
        /// The server refused the client's channel.
        case refused(Connection, reason: String)
        /// The client's deadline passed before its channel opened.
        case expired(Connection, reason: String)
        /// An abandoned open was confirmed after all: free this channel.
        case late(any TunnelChannel)
        /// The server answered a probe.
        case probeAnswered
        /// A health probe's channel opened (free it) or did not (why).
        case healthy(HealthCheck, any TunnelChannel)
        case unhealthy(HealthCheck, reason: String)
    }

    /// The open under way.
    struct Open {
        var request: Request
        var startedAt: ContinuousClock.Instant
        /// Its client was given up; the open goes on until the server or libssh2 ends it.
        var isAbandoned = false
    }

    /// Probes and health probes, served before clients (they are few, and a probe is urgent).
    private var internalQueue: [Request] = []
    /// Clients waiting for a channel, by deadline (earliest first), from `clientHead` on: a
    /// burst of thousands is queued, served and expired at O(1) per client.
    private var clients: [Connection] = []
    private var clientHead = 0
    private(set) var current: Open?
    let openTimeout: Double
    let window: UInt32
    /// How long the server has recently taken to answer an open (a moving average, seconds),
    /// once one was answered: with one open at a time, its inverse is the session's open rate.
    private(set) var answerSeconds: Double?
    /// Opens answered (opened or refused) so far.
    private(set) var answered = 0

    init(openTimeout: Double, window: UInt32 = 2 << 20) {
        self.openTimeout = openTimeout
        self.window = window
    }

    /// Queues a client's open; its deadline is `openTimeout` from now, or stays what it was
    /// when the client moved here from another session (moving never extends a wait, and
    /// such a client goes before those with later deadlines).
    mutating func enqueue(_ connection: Connection, now: ContinuousClock.Instant) {
        if connection.openDeadline == nil { connection.openDeadline = now + Duration(seconds: openTimeout) }
        let deadline = connection.openDeadline!
        if let last = clients.last, clients.count > clientHead, last.openDeadline! > deadline {
            // Rare (a moved client): find its place by deadline.
            var low = clientHead, high = clients.count
            while low < high {
                let middle = (low + high) / 2
                if clients[middle].openDeadline! <= deadline { low = middle + 1 } else { high = middle }
            }
            clients.insert(connection, at: low)
        } else {
            clients.append(connection)
        }
    }

    /// Queues a probe, unless one is queued or under way.
    mutating func enqueueProbe() {
        guard !hasProbe else { return }
        internalQueue.append(.probe)
    }

    /// Queues a health probe, unless one for the same service is queued or under way.
    mutating func enqueueHealth(_ check: HealthCheck) {
        let pending = internalQueue + (current.map { [$0.request] } ?? [])
        let isPending = pending.contains { if case .health(let other) = $0 { return other.service == check.service } else { return false } }
        if !isPending { internalQueue.append(.health(check)) }
    }

    /// Whether a probe is queued or under way.
    var hasProbe: Bool {
        if let current, case .probe = current.request { return true }
        return internalQueue.contains { if case .probe = $0 { return true } else { return false } }
    }

    /// Whether anything (a client, a probe) waits to be opened after the open under way.
    var hasQueue: Bool { !internalQueue.isEmpty || queuedClientCount > 0 }

    /// Clients queued behind the open under way.
    var queuedClientCount: Int { clients.count - clientHead }

    /// Whether any client waits for a channel (abandoned opens do not count).
    var hasClients: Bool { clientCount > 0 }

    /// How many clients wait for a channel.
    var clientCount: Int {
        var count = queuedClientCount
        if let current, !current.isAbandoned, case .client = current.request { count += 1 }
        return count
    }

    /// Since when the open under way has waited, if one is.
    var busySince: ContinuousClock.Instant? { current?.startedAt }

    /// Where the open under way goes (abandoned or not) and since when; nil for none, or a
    /// probe, which goes nowhere.
    var openUnderWay: (target: Endpoint, since: ContinuousClock.Instant)? {
        guard let current else { return nil }
        switch current.request {
        case .client(let connection): return (connection.target, current.startedAt)
        case .health(let check): return (check.target, current.startedAt)
        case .probe: return nil
        }
    }

    /// The clients still queued (not the one under way), taken out to go elsewhere; those
    /// for `keeping` stay (another session would be stuck on that target too).
    mutating func takeQueuedClients(keeping: Endpoint? = nil) -> [Connection] {
        var taken: [Connection] = []
        var kept: [Connection] = []
        for connection in clients[clientHead...] {
            if connection.target == keeping { kept.append(connection) } else { taken.append(connection) }
        }
        clients = kept
        clientHead = 0
        return taken
    }

    /// Every client that has no channel yet, taken out (the session is ending). The open
    /// under way is forgotten.
    mutating func takeAllClients() -> [Connection] {
        var taken = takeQueuedClients()
        if let current, !current.isAbandoned, case .client(let connection) = current.request {
            taken.insert(connection, at: 0)
        }
        current = nil
        internalQueue.removeAll()
        return taken
    }

    /// The earliest client deadline, for the loop's poll timeout.
    var nextDeadline: ContinuousClock.Instant? {
        let queued = clientHead < clients.count ? clients[clientHead].openDeadline : nil
        let underWay = current.flatMap { deadline(of: $0) }
        switch (queued, underWay) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b): return b
        }
    }

    /// The next request to start: probes and health probes first, then the earliest client.
    private mutating func takeNext() -> Request? {
        if !internalQueue.isEmpty { return internalQueue.removeFirst() }
        guard clientHead < clients.count else { return nil }
        let connection = clients[clientHead]
        clientHead += 1
        compactClients()
        return .client(connection)
    }

    /// Drops the served part of `clients` once it is most of the array.
    private mutating func compactClients() {
        if clientHead == clients.count {
            clients.removeAll(keepingCapacity: clients.count < 4096)
            clientHead = 0
        } else if clientHead >= 1024 && clientHead * 2 >= clients.count {
            clients.removeFirst(clientHead)
            clientHead = 0
        }
    }

    /// Counts an answered open into `answerSeconds`.
    private mutating func recordAnswer(of open: Open, now: ContinuousClock.Instant) {
        answered += 1
        guard !open.isAbandoned else { return }
        let seconds = (now - open.startedAt).seconds
        answerSeconds = answerSeconds.map { $0 * 0.9 + seconds * 0.1 } ?? seconds
    }

    /// When the open under way is given up for whoever asked: a client's own deadline, a
    /// health probe's `openTimeout` from its start. None once abandoned, or for a probe.
    private func deadline(of open: Open) -> ContinuousClock.Instant? {
        guard !open.isAbandoned else { return nil }
        switch open.request {
        case .client(let connection): return connection.openDeadline
        case .health: return open.startedAt + Duration(seconds: openTimeout)
        case .probe: return nil
        }
    }

    /// What progress produced: the events, then the session's failure if it failed meanwhile
    /// (what happened before it did still happened: a channel that opened must reach its client).
    struct Progress {
        var events: [Event] = []
        var failure: Error?
    }

    /// Starts queued opens and collects answers, one open at a time, until the session would
    /// block; then ends the clients whose deadline passed.
    mutating func progress(on session: any TunnelSession, now: ContinuousClock.Instant) -> Progress {
        var events: [Event] = []
        do {
            return Progress(events: try progress(on: session, now: now, into: &events))
        } catch {
            return Progress(events: events, failure: error)
        }
    }

    private mutating func progress(on session: any TunnelSession, now: ContinuousClock.Instant, into events: inout [Event]) throws -> [Event] {
        while true {
            if current == nil {
                guard let next = takeNext() else { break }
                // `now` is read by the caller just before this call, not at the start of
                // the pass: bytes taken in earlier in the pass are no answer to this open.
                current = Open(request: next, startedAt: now)
            }
            guard let open = current else { break }
            switch open.request {
            case .probe:
                guard try session.probe() != nil else { return events + expire(now: now) }
                current = nil
                events.append(.probeAnswered)
            case .health(let check):
                guard let result = try attempt(to: check.target, from: Endpoint(host: "127.0.0.1", port: 0), on: session) else {
                    return events + expire(now: now)
                }
                current = nil
                recordAnswer(of: open, now: now)
                switch result {
                case .success(let channel):
                    events.append(open.isAbandoned ? .late(channel) : .healthy(check, channel))
                case .failure(.refused(let reason)) where !open.isAbandoned:
                    events.append(.unhealthy(check, reason: "refused: \(reason)"))
                case .failure(.unanswered) where !open.isAbandoned:
                    events.append(.unhealthy(check, reason: unansweredReason))
                case .failure:
                    break
                }
            case .client(let connection):
                guard let result = try attempt(to: connection.target, from: connection.peer, on: session) else {
                    return events + expire(now: now)
                }
                current = nil
                recordAnswer(of: open, now: now)
                switch result {
                case .success(let channel):
                    events.append(open.isAbandoned ? .late(channel) : .opened(connection, channel))
                case .failure(.refused(let reason)) where !open.isAbandoned:
                    events.append(.refused(connection, reason: reason))
                case .failure(.unanswered) where !open.isAbandoned:
                    events.append(.expired(connection, reason: unansweredReason))
                case .failure:
                    break
                }
            }
        }
        return events + expire(now: now)
    }

    /// Asks for a channel: nil while the answer has not come, else the channel or why this
    /// open failed. Throws only when the session failed.
    private func attempt(to target: Endpoint, from originator: Endpoint, on session: any TunnelSession) throws -> Result<any TunnelChannel, ChannelOpenFailure>? {
        do {
            return try session.openChannel(to: target, from: originator, window: window).map { .success($0) }
        } catch let failure as ChannelOpenFailure {
            return .failure(failure)
        }
    }

    private var unansweredReason: String {
        "the server did not answer the channel open within \(openTimeout.secondsText) s"
    }

    /// Ends the clients whose deadline passed: the one under way is abandoned, queued ones
    /// leave the queue.
    private mutating func expire(now: ContinuousClock.Instant) -> [Event] {
        var events: [Event] = []
        if var open = current, let deadline = deadline(of: open), now >= deadline {
            open.isAbandoned = true
            current = open
            switch open.request {
            case .client(let connection): events.append(.expired(connection, reason: unansweredReason))
            case .health(let check): events.append(.unhealthy(check, reason: unansweredReason))
            case .probe: break
            }
        }
        let busyReason = "no channel could be opened within \(openTimeout.secondsText) s: the session was busy"
        let stuckTarget = openUnderWay?.target
        let sameTargetReason = "\(unansweredReason) (it waited behind an open to the same target)"
        // By deadline order, only the head can have expired.
        while clientHead < clients.count, let deadline = clients[clientHead].openDeadline, now >= deadline {
            let connection = clients[clientHead]
            clientHead += 1
            // Behind an open to its own target, the client waited on that target's silence.
            let reason = connection.target == stuckTarget ? sameTargetReason : busyReason
            events.append(.expired(connection, reason: reason))
        }
        compactClients()
        return events
    }
}
