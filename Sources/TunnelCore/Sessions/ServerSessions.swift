import TunnelConfig

/// Every decision about one server's SSH sessions, as a pure state machine: events in
/// (`handle`), commands out. No threads, sockets or clocks inside: the pool feeds it what the
/// listener and the sessions report, with the time, and carries out what it returns.
///
/// The rules:
/// - A client goes to the least loaded session that is up, not suspect and not stuck on a
///   channel open; a sibling is started when every such session carries `spreadThreshold`
///   connections, while fewer than `maxSessions` sessions are unstuck.
/// - A session whose channel open has waited `stuckOpenBound` is stuck. It does not count
///   toward `maxSessions`: a server may have `stuckAllowance` stuck sessions more (the hard
///   cap), so dead targets never starve live ones. A client whose target already has an open
///   stuck waits behind that open (it would be stuck too) instead of taking another session.
/// - Clients handed back from behind a stuck open may be for dead targets too: each target
///   gets a session of its own (dedicated, outside `maxSessions` like a stuck one), so that
///   one dead target's open never stands again in front of another target's clients. A
///   dedicated session whose open is answered becomes an ordinary one.
/// - At most one connect is under way: clients that arrive meanwhile wait for it; except in
///   a burst.
/// - A burst: libssh2 has one channel open in flight per session, so a session's clients wait
///   for a channel one answer after another. When the client would wait more than
///   `burstWaitBound` (its session's queue times the server's recent answer time), and more
///   than a new session takes to connect, a burst session is started (up to `burstConnects` connecting at once, within the hard cap), and
///   takes clients while the others' queues are long. Burst sessions take no client once the
///   others' waits are short again, so they linger out after the burst. A session carrying
///   `heavyLoad` connections is treated the same way: sshd's loop costs every channel of a
///   session on each pass, so new clients go to a lighter session, started if need be.
/// - Overload is refused at once: a client whose shortest possible wait would pass
///   `connect_timeout`, with no session left to start, is refused now with the reason,
///   instead of waiting in a queue to be refused at its deadline.
/// - Backoff throttles tunneld's own retries, never a client, except within `Backoff.floor`
///   of a failed attempt: then the client is refused with that failure's reason.
/// - A persistent server keeps one session that is persistent; when it ends or fails, the
///   next one starts when the backoff allows (at once for a client that arrives).
/// - A network change makes a session suspect only when the route to its server changed
///   (probe it; fresh sessions take new clients meanwhile); a session with no route, or whose
///   address is gone, is retired at once. A wake or `tunneld reconnect` suspects every session.
struct ServerSessions<Client> {
    /// A session's number, unique within this server for the daemon's life.
    typealias SessionID = Int

    /// What the sessions and the listener report.
    enum Event {
        /// A client wants a channel to `target`. `avoiding`: the session it leaves (its open
        /// there was stuck).
        case clientArrived(Client, target: Endpoint, avoiding: SessionID? = nil)
        /// The session logged in; `route` is how the machine reaches the server now.
        case connected(SessionID, route: RouteCheck)
        /// The session could not be set up; the clients it held are handed back.
        case connectFailed(SessionID, reason: String, isLocalShortage: Bool, clients: [Client])
        /// The session's loop ran a pass: its load, the open under way, if one is, and its
        /// open queue.
        case report(SessionID, load: Int, openUnderWay: OpenUnderWay?, isProbing: Bool, opens: OpenQueue = OpenQueue())
        /// The session ended. Clients that had no channel yet (with their targets and whether
        /// they were retries) are handed back; `diedOf` is set when the session failed.
        case ended(SessionID, diedOf: String?, orphans: [Orphan], servedAnyone: Bool, lifetime: Duration)
        /// The route to the server as a session sees it after a network change.
        case routeChecked(SessionID, RouteCheck)
        /// The machine woke, or `tunneld reconnect`: every session may be dead.
        case suspectAll
        /// The network changed: a failure from before it no longer refuses anyone.
        case networkChanged
        /// Time passed (for persistent restarts).
        case tick
        /// A reload changed or removed this server: sessions finish their clients and end.
        case retireAll
        /// tunneld is stopping: no new sessions, clients are refused.
        case stop
    }

    /// A client a session hands back, with what routing needs to know of it.
    struct Orphan {
        var client: Client
        var target: Endpoint
        var isRetry: Bool
    }

    /// The open a session has under way: where to, and since when.
    struct OpenUnderWay: Equatable {
        var target: Endpoint
        var since: ContinuousClock.Instant
    }

    /// A session's channel-open queue, as it reports it.
    struct OpenQueue: Equatable {
        /// Clients waiting for a channel, the one under way included.
        var waiting = 0
        /// How long the server recently took to answer one open, once known (seconds).
        var answerSeconds: Double?
        /// Opens answered so far.
        var answered = 0
    }

    /// What the pool must do.
    enum Command {
        /// Start a new session thread with this number.
        case start(SessionID, isPersistent: Bool)
        /// Hand the client to this session (up, or still connecting).
        case hand(Client, to: SessionID)
        /// Close the client at once with this reason.
        case refuse(Client, reason: String)
        /// Probe the session now: it dies unless the server answers within seconds.
        case probe(SessionID)
        /// End the session now (it is dead): its clients are cut, its waiting ones handed back.
        case kill(SessionID, reason: String)
        /// End the session once its clients are done; it takes no new ones.
        case retire(SessionID)
        /// Ask the session to check its route to the server (after a network change).
        case checkRoute(SessionID)
        /// Say once that the hard cap is reached.
        case capReached(sessions: Int)
        /// Say that session N starts for a burst: clients wait this long for a channel.
        case burstStarted(SessionID, waiting: Int, waitSeconds: Double)
    }

    /// Where a session is in its life, as the core sees it.
    enum Phase: Equatable {
        case connecting
        case up
    }

    /// One session as the core knows it.
    struct Session: Equatable {
        var phase = Phase.connecting
        var isPersistent: Bool
        /// Connections plus clients handed to it and not yet reported as taken.
        var load = 0
        var openUnderWay: OpenUnderWay?
        /// Told it may be dead, and not yet proven alive.
        var isSuspect = false
        var upSince: ContinuousClock.Instant?
        /// The route to the server when the session came up, or after its last check.
        var route: RouteFacts?
        /// Started for the clients of this target handed back from behind a stuck open: it
        /// takes no other target's clients until its first open is answered.
        var dedicatedTarget: Endpoint?
        /// Whether it has reported an open under way (a dedicated session's first).
        var hasReportedOpen = false
        /// Its open queue, as last reported, plus the clients handed to it since.
        var opens = OpenQueue()
        /// Started for a burst: it takes clients only while the others' waits are long.
        var isBurst = false
        /// When it was started, while it connects.
        var startedAt: ContinuousClock.Instant?
        /// Its opens answered in the last second.
        var answerRate = TenthsCounter()

        /// Whether its open under way has waited past the stuck bound at `now`.
        func isStuck(at now: ContinuousClock.Instant) -> Bool {
            openUnderWay.map { now - $0.since >= ServerSessions.stuckOpenBound } ?? false
        }
    }

    /// An open under way longer than this is stuck: the next clients go to a sibling.
    static var stuckOpenBound: Duration { .milliseconds(250) }
    /// A session carrying this many connections makes the core start a sibling, if allowed.
    static var spreadThreshold: Int { 4 }
    /// How many stuck sessions a server may have beyond `maxSessions`.
    static var stuckAllowance: Int { 16 }
    /// A client expected to wait longer than this for its channel starts a burst session.
    static var burstWaitBound: Double { 0.1 }
    /// A session carrying this many connections is heavy: OpenSSH's sshd walks every channel
    /// of a session on every pass of its loop (measured: 250 idle channels add 1.3 ms of sshd
    /// time to each SMTP-shaped exchange on that session), so new clients go to a lighter
    /// session, started if need be, up to the hard cap.
    static var heavyLoad: Int { 256 }
    /// At most this many sessions connect at once in a burst (DESIGN: one connect per server in flight).
    static var burstConnects: Int { 1 }
    /// What an open is assumed to take before any was answered (seconds).
    static var assumedAnswerSeconds: Double { 0.001 }

    private(set) var settings: SessionSettings
    private(set) var sessions: [SessionID: Session] = [:]
    private(set) var backoff = Backoff()
    /// Failed connects since start.
    private(set) var connectFailures = 0
    /// Whether the hard cap was reached and said, so it is said once per episode.
    private(set) var isAtCap = false
    private(set) var isStopping = false
    private var nextID: SessionID = 1
    /// How long connects recently took (a moving average, seconds), once one succeeded.
    private(set) var connectSeconds: Double?
    /// How long the server recently took to answer an open, over all its sessions.
    private(set) var answerSeconds: Double?
    /// Opens answered in the last second, in tenths of a second.
    private var answerRate = TenthsCounter()
    /// Clients refused at once because the wait would pass connect_timeout.
    private(set) var overloadRefusals = 0

    init(settings: SessionSettings) {
        self.settings = settings
    }

    /// The hard cap on sessions, stuck ones included.
    var hardCap: Int { settings.maxSessions + Self.stuckAllowance }

    /// Takes new settings after a reload (running sessions keep theirs).
    mutating func update(settings: SessionSettings) {
        self.settings = settings
    }

    // MARK: Events

    /// Takes one event at `now`; returns what to do, in order.
    mutating func handle(_ event: Event, now: ContinuousClock.Instant) -> [Command] {
        var commands: [Command] = []
        switch event {
        case .clientArrived(let client, let target, let avoiding):
            route(client, target: target, avoiding: avoiding, now: now, into: &commands)
        case .connected(let id, let check):
            backoff.succeeded()
            if let startedAt = sessions[id]?.startedAt {
                let seconds = (now - startedAt).seconds
                connectSeconds = connectSeconds.map { $0 * 0.7 + seconds * 0.3 } ?? seconds
            }
            sessions[id]?.startedAt = nil
            sessions[id]?.phase = .up
            sessions[id]?.upSince = now
            if case .route(let facts) = check { sessions[id]?.route = facts }
        case .connectFailed(let id, let reason, let isLocalShortage, let clients):
            let wasPersistent = sessions[id]?.isPersistent ?? false
            sessions[id] = nil
            // A local shortage (descriptors, memory) is not the server's fault: it is not
            // counted against it, but still spaces out the next attempt.
            if !isLocalShortage { connectFailures += 1 }
            _ = backoff.failed(reason, now: now)
            for client in clients { commands.append(.refuse(client, reason: reason)) }
            if wasPersistent { startPersistentIfMissing(now: now, into: &commands) }
        case .report(let id, let load, let open, let isProbing, let opens):
            guard sessions[id] != nil else { break }
            sessions[id]!.load = load
            let answeredNow = opens.answered - sessions[id]!.opens.answered
            if answeredNow > 0 {
                answerRate.add(answeredNow, at: now)
                sessions[id]!.answerRate.add(answeredNow, at: now)
            }
            if let seconds = opens.answerSeconds { answerSeconds = seconds }
            sessions[id]!.opens = opens
            sessions[id]!.openUnderWay = open
            if open != nil {
                sessions[id]!.hasReportedOpen = true
            } else if sessions[id]!.hasReportedOpen {
                // Its open was answered: the target is alive, the session an ordinary one.
                sessions[id]!.dedicatedTarget = nil
            }
            if !isProbing { sessions[id]!.isSuspect = false }
            if isAtCap && sessions.count < hardCap { isAtCap = false }
        case .ended(let id, let diedOf, let orphans, let servedAnyone, let lifetime):
            let wasPersistent = sessions[id]?.isPersistent ?? false
            sessions[id] = nil
            if let reason = diedOf, !servedAnyone, lifetime < .seconds(2) {
                // A server that drops sessions right after login must not be hammered.
                connectFailures += 1
                _ = backoff.failed(reason, now: now)
            }
            for orphan in orphans {
                if orphan.isRetry || isStopping {
                    commands.append(.refuse(orphan.client, reason: isStopping ? "tunneld is stopping" : diedOf ?? "the session ended"))
                } else {
                    route(orphan.client, target: orphan.target, avoiding: nil, now: now, into: &commands)
                }
            }
            if wasPersistent { startPersistentIfMissing(now: now, into: &commands) }
        case .routeChecked(let id, let check):
            guard let session = sessions[id], session.phase == .up else { break }
            switch check {
            case .route(let facts):
                if facts != session.route {
                    sessions[id]!.route = facts
                    sessions[id]!.isSuspect = true
                    commands.append(.probe(id))
                }
            case .unknown:
                break
            case .gone(let reason):
                sessions[id] = nil
                commands.append(.kill(id, reason: reason))
            }
        case .suspectAll:
            backoff.reset()
            for (id, session) in sessions.sorted(by: { $0.key < $1.key }) where session.phase == .up {
                sessions[id]!.isSuspect = true
                commands.append(.checkRoute(id))
                commands.append(.probe(id))
            }
            startPersistentIfMissing(now: now, into: &commands)
        case .networkChanged:
            backoff.reset()
            for id in sessions.keys.sorted() where sessions[id]!.phase == .up {
                commands.append(.checkRoute(id))
            }
            startPersistentIfMissing(now: now, into: &commands)
        case .tick:
            startPersistentIfMissing(now: now, into: &commands)
        case .retireAll:
            for id in sessions.keys.sorted() {
                commands.append(.retire(id))
            }
            sessions.removeAll()
        case .stop:
            isStopping = true
        }
        return commands
    }

    /// When the core must be ticked next, if at all: a persistent server's retry.
    var nextTick: ContinuousClock.Instant? {
        guard settings.isPersistent, !isStopping, !sessions.values.contains(where: \.isPersistent) else { return nil }
        return backoff.retryAt
    }

    // MARK: Routing

    private mutating func route(_ client: Client, target: Endpoint, avoiding: SessionID?, now: ContinuousClock.Instant, into commands: inout [Command]) {
        guard !isStopping else {
            commands.append(.refuse(client, reason: "tunneld is stopping"))
            return
        }
        let ids = sessions.keys.sorted()
        let others = ids.filter { $0 != avoiding }
        // 1. Behind an open already stuck on the same target (another session would be
        //    stuck too), or with the target's dedicated session.
        if let behind = others.first(where: { sessions[$0]!.isStuck(at: now) && sessions[$0]!.openUnderWay?.target == target })
            ?? others.first(where: { sessions[$0]!.dedicatedTarget == target }) {
            hand(client, to: behind, into: &commands)
            return
        }
        let ordinary = ids.filter { !sessions[$0]!.isStuck(at: now) && sessions[$0]!.dedicatedTarget == nil }
        let hasRoom = ordinary.count < settings.maxSessions && ids.count < hardCap
        // A client handed back from behind a stuck open gets a session for its target.
        if avoiding != nil && ids.count < hardCap {
            let id = startSession(isPersistent: false, now: now, into: &commands)
            sessions[id]!.dedicatedTarget = target
            hand(client, to: id, into: &commands)
            return
        }
        let ready = others.filter { id in
            let session = sessions[id]!
            return session.phase == .up && !session.isSuspect && !session.isStuck(at: now) && session.dedicatedTarget == nil
        }
        let refusal = backoff.refusal(now: now)
        // 2. The least loaded ready session, unless it is busy and a sibling may start, or
        //    its client would wait long for a channel (a burst).
        if let best = ready.filter({ !sessions[$0]!.isBurst }).min(by: { sessions[$0]!.load < sessions[$1]!.load })
            ?? ready.min(by: { sessions[$0]!.load < sessions[$1]!.load }),
           sessions[best]!.load < Self.spreadThreshold || !hasRoom || refusal != nil {
            if isLight(best, now: now) {
                hand(client, to: best, into: &commands)
            } else {
                routeInBurst(client, ready: ready, others: others, refusal: refusal, now: now, into: &commands)
            }
            return
        }
        // 3. The connect under way.
        if let connecting = others.first(where: { sessions[$0]!.phase == .connecting && sessions[$0]!.dedicatedTarget == nil }) {
            hand(client, to: connecting, into: &commands)
            return
        }
        // 4. Within a second of a failed connect: refuse with its reason (offline fails fast).
        if let refusal {
            commands.append(.refuse(client, reason: refusal))
            return
        }
        // 5. A new session, if there is room, or if every session is suspect (the fresh one
        //    races the old ones' probes) and the hard cap allows.
        let allSuspect = !others.isEmpty && others.allSatisfy { sessions[$0]!.isSuspect }
        if hasRoom || (allSuspect && ids.count < hardCap) || ids.isEmpty {
            let id = startSession(isPersistent: settings.isPersistent && !sessions.values.contains(where: \.isPersistent), now: now, into: &commands)
            hand(client, to: id, into: &commands)
            return
        }
        // 6. No room: the least loaded session serves the client in turn.
        if ids.count >= hardCap && !isAtCap {
            isAtCap = true
            commands.append(.capReached(sessions: ids.count))
        }
        let candidates = ready.isEmpty ? (others.isEmpty ? ids : others) : ready
        let least = candidates.min { sessions[$0]!.load < sessions[$1]!.load }!
        hand(client, to: least, into: &commands)
    }

    /// Every ready session's client would wait long: the session with the shortest wait,
    /// connecting ones included, unless a burst session may start; refused at once when even
    /// the shortest wait passes connect_timeout and no session can start.
    private mutating func routeInBurst(_ client: Client, ready: [SessionID], others: [SessionID], refusal: String?, now: ContinuousClock.Instant, into commands: inout [Command]) {
        let candidates = others.filter { id in
            let session = sessions[id]!
            return session.dedicatedTarget == nil && !session.isSuspect && !session.isStuck(at: now)
                && (ready.contains(id) || session.phase == .connecting)
        }
        // A lighter session, a burst one included, if one is.
        if let light = candidates.filter({ isLight($0, now: now) }).min(by: { sessions[$0]!.load < sessions[$1]!.load }) {
            hand(client, to: light, into: &commands)
            return
        }
        let shortest = candidates.min { expectedWait(at: $0, now: now) < expectedWait(at: $1, now: now) }
        let wait = shortest.map { expectedWait(at: $0, now: now) } ?? .infinity
        if refusal == nil && sessions.count < min(hardCap, settings.mostSessions)
            && sessions.values.filter({ $0.phase == .connecting }).count < Self.burstConnects {
            let id = startSession(isPersistent: false, now: now, into: &commands)
            sessions[id]!.isBurst = true
            commands.append(.burstStarted(id, waiting: waitingForChannel, waitSeconds: wait))
            hand(client, to: id, into: &commands)
            return
        }
        // Refusing is for a wait that is sure to pass connect_timeout: the answer time of one
        // open varies, so the wait is also judged by the opens answered in the last second,
        // and the shorter estimate decides.
        let steady = candidates.min { steadyWait(at: $0, now: now) < steadyWait(at: $1, now: now) }
        // (A steady wait is never longer than the expected one, so `steady`'s is the shortest.)
        if let steady, steadyWait(at: steady, now: now) <= settings.openTimeout {
            hand(client, to: wait <= settings.openTimeout ? shortest! : steady, into: &commands)
            return
        }
        overloadRefusals += 1
        commands.append(.refuse(client, reason: "overloaded: \(waitingForChannel) clients wait for a channel to \(settings.key.server) on \(sessions.count) sessions, "
            + "and this one would wait about \(Self.secondsText(wait)) s, past connect_timeout (\(settings.openTimeout.secondsText) s)"))
    }

    /// The wait at session `id` judged by its opens answered in the last second (as long as
    /// `expectedWait` when it answered too few to judge).
    private func steadyWait(at id: SessionID, now: ContinuousClock.Instant) -> Double {
        let answered = sessions[id]!.answerRate.lastSecond(at: now)
        guard answered >= 20 else { return expectedWait(at: id, now: now) }
        return min(expectedWait(at: id, now: now), Double(sessions[id]!.opens.waiting) / Double(answered))
    }

    /// Whether session `id` takes a client without more ado: its client would wait less than
    /// the burst threshold for its open, and it carries fewer than `heavyLoad` connections.
    private func isLight(_ id: SessionID, now: ContinuousClock.Instant) -> Bool {
        sessions[id]!.load < Self.heavyLoad && expectedWait(at: id, now: now) <= burstThreshold
    }

    /// How long a new client of session `id` would wait before its own open starts: the
    /// clients before it times the server's recent answer time, after the connect for a
    /// session connecting.
    func expectedWait(at id: SessionID, now: ContinuousClock.Instant) -> Double {
        guard let session = sessions[id] else { return .infinity }
        let answer = session.opens.answerSeconds ?? answerSeconds ?? Self.assumedAnswerSeconds
        var wait = Double(session.opens.waiting) * answer
        if session.phase == .connecting {
            let connect = connectSeconds ?? 0.1
            let elapsed = session.startedAt.map { (now - $0).seconds } ?? 0
            wait += max(0, connect - elapsed)
        }
        return wait
    }

    /// A wait longer than this starts a burst session: the bound, or what a new session takes
    /// to connect, if longer (on a far server, waiting in the queue is then quicker).
    private var burstThreshold: Double {
        max(Self.burstWaitBound, connectSeconds ?? Self.burstWaitBound)
    }

    private static func secondsText(_ seconds: Double) -> String {
        seconds.isFinite ? String(Double(Int(seconds * 10)) / 10) : "forever"
    }

    private mutating func hand(_ client: Client, to id: SessionID, into commands: inout [Command]) {
        sessions[id]!.load += 1
        sessions[id]!.opens.waiting += 1
        commands.append(.hand(client, to: id))
    }

    private mutating func startSession(isPersistent: Bool, now: ContinuousClock.Instant, into commands: inout [Command]) -> SessionID {
        let id = nextID
        nextID += 1
        sessions[id] = Session(isPersistent: isPersistent)
        sessions[id]!.startedAt = now
        commands.append(.start(id, isPersistent: isPersistent))
        return id
    }

    /// A persistent server without its persistent session starts one, at once or, backing
    /// off, at its retry time (`nextTick`).
    private mutating func startPersistentIfMissing(now: ContinuousClock.Instant, into commands: inout [Command]) {
        guard settings.isPersistent, !isStopping, !sessions.values.contains(where: \.isPersistent) else { return }
        if let retryAt = backoff.retryAt, retryAt > now { return }
        _ = startSession(isPersistent: true, now: now, into: &commands)
    }

    // MARK: Status

    /// Sessions up now.
    var sessionsUp: Int { sessions.values.filter { $0.phase == .up }.count }
    /// Sessions stuck on a channel open at `now`.
    func stuckCount(at now: ContinuousClock.Instant) -> Int { sessions.values.filter { $0.isStuck(at: now) }.count }
    /// Whether a connect is under way.
    var isConnecting: Bool { sessions.values.contains { $0.phase == .connecting } }
    /// When the oldest session up came up.
    var oldestUpSince: ContinuousClock.Instant? { sessions.values.compactMap(\.upSince).min() }
    /// Clients waiting for a channel, over all sessions.
    var waitingForChannel: Int { sessions.values.reduce(0) { $0 + $1.opens.waiting } }
    /// How long the next client would wait for its channel at `now` on the best session up.
    func nextClientWait(at now: ContinuousClock.Instant) -> Double? {
        sessions.keys.filter { sessions[$0]!.phase == .up && !sessions[$0]!.isStuck(at: now) }.map { expectedWait(at: $0, now: now) }.min()
    }
    /// Opens answered per second, over the last second.
    func opensPerSecond(at now: ContinuousClock.Instant) -> Int {
        answerRate.lastSecond(at: now)
    }
    /// Burst sessions now.
    var burstSessions: Int { sessions.values.filter(\.isBurst).count }
}

/// Counts events in the last second, in ten buckets of a tenth: O(1) to add and to read.
struct TenthsCounter: Equatable {
    /// Per bucket: the tenth (since `origin`) it counts, and its count.
    private var buckets = [(tenth: Int, count: Int)](repeating: (-1, 0), count: 10)
    private var origin: ContinuousClock.Instant?

    static func == (a: TenthsCounter, b: TenthsCounter) -> Bool {
        a.origin == b.origin && a.buckets.elementsEqual(b.buckets) { $0.tenth == $1.tenth && $0.count == $1.count }
    }

    mutating func add(_ count: Int, at now: ContinuousClock.Instant) {
        if origin == nil { origin = now }
        let tenth = self.tenth(of: now)
        let index = tenth % 10
        if buckets[index].tenth != tenth { buckets[index] = (tenth, 0) }
        buckets[index].count += count
    }

    /// Events in the last second.
    func lastSecond(at now: ContinuousClock.Instant) -> Int {
        guard origin != nil else { return 0 }
        let current = tenth(of: now)
        return buckets.reduce(0) { $0 + ($1.tenth > current - 10 && $1.tenth <= current ? $1.count : 0) }
    }

    private func tenth(of now: ContinuousClock.Instant) -> Int {
        max(0, Int((now - (origin ?? now)).seconds * 10))
    }
}
