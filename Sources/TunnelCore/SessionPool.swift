import FoundationEssentials
import Logging
import TunnelConfig

/// Routes each accepted client to an SSH session to its server, and remembers per server how
/// connecting has gone.
///
/// A server may have up to `sessions` sessions at once, each its own supervisor and thread.
/// A client goes to the least loaded session that is up, not suspect and not stuck on a
/// channel open; another session is started when every one carries `spreadThreshold`
/// connections or is stuck or suspect. At most one connect per server is under way: clients
/// that arrive meanwhile wait for it. Backoff spaces out tunneld's own retries and never
/// refuses a client, except within a second of a failed attempt (then with its reason).
final class SessionPool: @unchecked Sendable {
    private struct Server {
        var settings: SessionSettings
        var supervisors: [SessionSupervisor] = []
        var backoff = Backoff()
        var lastErrorAt: Date?
        /// Failed connects since start.
        var connectFailures = 0
    }

    private struct State {
        var servers: [SessionKey: Server] = [:]
        var isStopping = false
        /// Every supervisor whose thread still runs, including those a reload detached.
        var live: [ObjectIdentifier: SessionSupervisor] = [:]
    }

    /// A server's sessions and connect history, for `tunneld status`.
    struct ServerStatus: Equatable {
        /// `idle`, `connecting`, `up` or `backing-off`.
        var state: String
        /// Sessions up now.
        var sessionsUp: Int
        /// Seconds the oldest session up has been up.
        var oldestSessionSeconds: Double?
        /// Failed connects since start.
        var connectFailures = 0
        /// When tunneld tries again on its own (persistent sessions backing off).
        var retryAt: Date?
        var lastError: String?
        var lastErrorAt: Date?
    }

    private let state = Locked(State())
    private let logger: Logger
    /// Kept by every session's event loop.
    let watchdog: Watchdog?
    /// Results of the persistent sessions' health probes.
    let health = HealthBoard()
    private let suspendDetector = Locked(SuspendDetector())

    init(services: [Service], logger: Logger, watchdog: Watchdog? = nil) {
        self.logger = logger
        self.watchdog = watchdog
        let byKey = SessionSettings.byKey(services)
        state.withLock { state in
            for (key, settings) in byKey {
                state.servers[key] = Server(settings: settings)
            }
        }
    }

    /// Starts the sessions of persistent servers.
    func startPersistentSessions() {
        let started = state.withLock { state -> [SessionSupervisor] in
            guard !state.isStopping else { return [] }
            var started: [SessionSupervisor] = []
            for (key, server) in state.servers where server.settings.isPersistent && !server.supervisors.contains(where: \.isPersistent) {
                if let supervisor = makeSupervisor(for: key, persistent: true, in: &state) { started.append(supervisor) }
            }
            return started
        }
        started.forEach { $0.start() }
    }

    // MARK: Routing

    /// Sends a client to a session of its server, starting one if needed.
    /// - `avoiding`: a session the client is moving off (its channel open is stuck).
    func dispatch(_ connection: Connection, avoiding: SessionSupervisor? = nil) {
        if suspendDetector.withLock({ $0.resumedFromSuspend() }) {
            logger.notice("the machine woke from a suspend; sessions are suspect")
            networkChanged(resetBackoff: true)
        }
        let now = ContinuousClock.now
        enum Decision {
            case enqueued
            case start(SessionSupervisor)
            case refuse(String)
        }
        let decision = state.withLock { state -> Decision in
            guard !state.isStopping else { return .refuse("tunneld is stopping") }
            let key = connection.service.sessionKey
            guard let server = state.servers[key] else { return .refuse("no session settings for this service") }
            let supervisors = server.supervisors
            let route = SessionRouter.route(
                supervisors.map(\.gauge), avoiding: supervisors.firstIndex { $0 === avoiding },
                maxSessions: server.settings.maxSessions, refusal: server.backoff.refusal(now: now), now: now)
            switch route {
            case .session(let index):
                if supervisors[index].enqueue(connection) { return .enqueued }
            case .refuse(let reason):
                return .refuse(reason)
            case .startSession:
                break
            }
            // A new session; also when the chosen one retired a moment ago.
            if let supervisor = makeSupervisor(for: key, persistent: false, in: &state) {
                _ = supervisor.enqueue(connection)
                return .start(supervisor)
            }
            // Out of descriptors: a session that already runs takes the client, in turn.
            let live = supervisors.filter { $0.gauge.phase != .retired }.min { $0.gauge.load < $1.gauge.load }
            if let live, live.enqueue(connection) { return .enqueued }
            return .refuse("out of file descriptors: no new session can start")
        }
        switch decision {
        case .enqueued:
            break
        case .start(let supervisor):
            supervisor.start()
        case .refuse(let reason):
            connection.finish(.sshFailed(reason), logger: logger)
        }
    }

    /// A new supervisor for `key`, counted as live until it ends; nil when the process is out
    /// of descriptors. Call within the lock.
    private func makeSupervisor(for key: SessionKey, persistent: Bool, in state: inout State) -> SessionSupervisor? {
        let settings = state.servers[key]!.settings
        guard let supervisor = try? SessionSupervisor(settings: settings, isPersistent: persistent, pool: self, logger: logger) else {
            return nil
        }
        state.servers[key]!.supervisors.append(supervisor)
        state.live[ObjectIdentifier(supervisor)] = supervisor
        return supervisor
    }

    /// Forgets a supervisor that has ended.
    func supervisorEnded(_ supervisor: SessionSupervisor) {
        state.withLock { state in
            let key = supervisor.settings.key
            state.servers[key]?.supervisors.removeAll { $0 === supervisor }
            state.live[ObjectIdentifier(supervisor)] = nil
        }
    }

    // MARK: Backoff

    /// Seconds a persistent session must still wait before connecting again, if any.
    func backoffWait(for key: SessionKey) -> Double? {
        state.withLock { $0.servers[key]?.backoff.wait(now: .now) }
    }

    /// Notes a failed connect; returns the seconds until tunneld's own next attempt.
    func recordFailure(for key: SessionKey, reason: String) -> Double {
        state.withLock { state in
            state.servers[key]?.lastErrorAt = Date()
            state.servers[key]?.connectFailures += 1
            return state.servers[key]?.backoff.failed(reason, now: .now) ?? 0
        }
    }

    /// Notes a successful connect: the backoff starts over.
    func recordSuccess(for key: SessionKey) {
        state.withLock { $0.servers[key]?.backoff.succeeded() }
    }

    // MARK: Suspicion

    /// The network changed, or the machine woke: every session may be dead. Each is probed
    /// (one whose local address is gone dies at once); clients go to fresh sessions meanwhile.
    /// With `resetBackoff`, a failure from before the change no longer refuses anyone.
    func networkChanged(resetBackoff: Bool, keys: Set<SessionKey>? = nil) {
        let addresses = Socket.localAddresses()
        let supervisors = state.withLock { state -> [SessionSupervisor] in
            var all: [SessionSupervisor] = []
            for (key, server) in state.servers where keys?.contains(key) ?? true {
                if resetBackoff { state.servers[key]?.backoff.reset() }
                all += server.supervisors
            }
            return all
        }
        for supervisor in supervisors { supervisor.suspect(localAddresses: addresses) }
        startPersistentSessions()
    }

    /// `tunneld reconnect [SERVICE…]`: the sessions of these services (all if empty) are
    /// suspect and their backoff is reset. Returns the session keys touched.
    @discardableResult
    func reconnect(services: [Service]) -> Int {
        // A service's sessions, and those of its jump hosts.
        let keys = services.isEmpty ? nil : Set(services.flatMap { service in
            sequence(first: service.sessionKey, next: \.jumpRoute)
        })
        networkChanged(resetBackoff: true, keys: keys)
        return keys?.count ?? state.withLock { $0.servers.count }
    }

    // MARK: Status

    /// The sessions and connect history of the server `key` uses.
    func status(of key: SessionKey) -> ServerStatus {
        state.withLock { state in
            guard let server = state.servers[key] else { return ServerStatus(state: "idle", sessionsUp: 0) }
            let gauges = server.supervisors.map(\.gauge)
            let up = gauges.filter { $0.phase == .up }.count
            let oldest = gauges.compactMap(\.upSince).min().map { (ContinuousClock.now - $0).seconds }
            var status = ServerStatus(state: "idle", sessionsUp: up, oldestSessionSeconds: oldest, connectFailures: server.connectFailures,
                                      lastError: server.backoff.lastError, lastErrorAt: server.lastErrorAt)
            if let wait = server.backoff.wait(now: .now), up == 0 {
                status.state = "backing-off"
                status.retryAt = Date().addingTimeInterval(wait)
            } else if up > 0 {
                status.state = "up"
            } else if gauges.contains(where: { $0.phase == .connecting }) {
                status.state = "connecting"
            }
            return status
        }
    }

    // MARK: Reload and stop

    /// Takes a reloaded set of services. Keys still in use get the new settings for their
    /// next sessions; sessions of keys no longer used, or whose settings changed, finish
    /// their connections and end.
    func update(services: [Service]) {
        let byKey = SessionSettings.byKey(services)
        let retiring = state.withLock { state -> [SessionSupervisor] in
            var retiring: [SessionSupervisor] = []
            for (key, server) in state.servers where byKey[key] == nil {
                retiring += server.supervisors
                state.servers[key] = nil
            }
            for (key, settings) in byKey {
                if var server = state.servers[key] {
                    if server.settings != settings {
                        // Running sessions keep their settings; the next ones get the new.
                        retiring += server.supervisors
                        server.supervisors.removeAll()
                    }
                    server.settings = settings
                    state.servers[key] = server
                } else {
                    state.servers[key] = Server(settings: settings)
                }
            }
            return retiring
        }
        for supervisor in retiring { supervisor.stop(drainUntil: nil) }
        startPersistentSessions()
    }

    /// Stops every session: connections get until `deadline` to finish.
    func stopAll(drainUntil deadline: ContinuousClock.Instant) {
        let supervisors = state.withLock { state in
            state.isStopping = true
            return Array(state.live.values)
        }
        for supervisor in supervisors { supervisor.stop(drainUntil: deadline) }
    }

    /// Whether any session's thread is still running.
    var hasLiveLoops: Bool {
        state.withLock { !$0.live.isEmpty }
    }
}
