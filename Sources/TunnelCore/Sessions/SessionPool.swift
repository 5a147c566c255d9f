import FoundationEssentials
import Logging
import Platform
import TunnelConfig

/// Carries out the decisions of each server's sessions: it feeds every event (a client
/// arrived, a session connected, reported, ended; the network changed; time passed) to the
/// server's decision core (`ServerSessions`) under one lock, then, outside the lock, does
/// what the core returned: starts session threads, hands clients to them, refuses clients,
/// probes, kills or retires sessions. Nothing here decides where a client goes.
final class SessionPool: @unchecked Sendable {
    typealias Core = ServerSessions<Connection>

    private struct Server {
        var core: Core
        /// Which server of this key this is: a reload that removes a key and adds it again
        /// makes a new one, whose session numbers start over.
        var generation: Int
        var supervisors: [Int: SessionSupervisor] = [:]
        /// When the last connect failed, for status.
        var lastErrorAt: Date?
    }

    /// A session's supervisor, named across reloads.
    private struct SupervisorName: Hashable {
        var key: SessionKey
        var generation: Int
        var id: Int
    }

    private struct State {
        var servers: [SessionKey: Server] = [:]
        var isStopping = false
        /// Every supervisor whose thread still runs, including those a reload detached.
        var live: [SupervisorName: SessionSupervisor] = [:]
        var nextGeneration = 1

        mutating func addServer(_ settings: SessionSettings) {
            servers[settings.key] = Server(core: Core(settings: settings), generation: nextGeneration)
            nextGeneration += 1
        }
    }

    /// A server's sessions and connect history, for `tunneld status`.
    struct ServerStatus: Equatable {
        var state: ServerState
        /// Sessions up now.
        var sessionsUp: Int
        /// Sessions stuck on a channel open now (they do not count toward `sessions`).
        var sessionsStuck = 0
        /// Whether the hard cap on sessions is reached.
        var isAtCap = false
        /// The channel-open queue over the server's sessions.
        var opens = StatusReport.OpenQueue()
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
    private var factory: (any SessionFactory)!
    /// Kept by every session's event loop.
    let watchdog: Watchdog?
    /// Results of the persistent sessions' health probes.
    let health = HealthBoard()
    private let suspendDetector = Locked(SuspendDetector())
    private let timer: PoolTimer

    /// - `factory`: how sessions are set up; the daemon's connects over SSH.
    init(services: [Service], logger: Logger, watchdog: Watchdog? = nil, factory: (any SessionFactory)? = nil) {
        self.logger = logger
        self.watchdog = watchdog
        timer = PoolTimer()
        self.factory = factory ?? SSHSessionFactory(pool: self)
        let byKey = SessionSettings.byKey(services)
        state.withLock { state in
            for settings in byKey.values { state.addServer(settings) }
        }
        timer.start { [weak self] in self?.tick() }
    }

    /// Starts the sessions of persistent servers.
    func startPersistentSessions() {
        forEachServer(.tick)
    }

    // MARK: Events in

    /// Sends a client to a session of its server, starting one if needed.
    func dispatch(_ connection: Connection) {
        if suspendDetector.withLock({ $0.resumedFromSuspend() }) {
            logger.notice("the machine woke from a suspend; sessions are suspect")
            machineWoke()
        }
        handle(.clientArrived(connection, target: connection.target), for: connection.service.sessionKey, generation: nil)
    }

    /// The network changed: each session checks its route to its server, and only those
    /// whose route changed are probed; a failure from before the change no longer refuses.
    func networkChanged() {
        FamilyCache.shared.forget()
        forEachServer(.networkChanged)
    }

    /// The machine woke from a suspend: every session may be dead (probed; fresh sessions
    /// take new clients meanwhile).
    func machineWoke() {
        FamilyCache.shared.forget()
        forEachServer(.suspectAll)
    }

    /// `tunneld reconnect [SERVICE…]`: the sessions of these services (all if empty), and of
    /// their jump hosts, are suspect and their backoff is reset. Returns the servers touched.
    @discardableResult
    func reconnect(services: [Service]) -> Int {
        let keys = services.isEmpty ? nil : Set(services.flatMap { service in
            sequence(first: service.sessionKey, next: \.jumpRoute)
        })
        let chosen = state.withLock { state in state.servers.keys.filter { keys?.contains($0) ?? true } }
        for key in chosen { handle(.suspectAll, for: key, generation: nil) }
        return keys?.count ?? chosen.count
    }

    private func forEachServer(_ event: Core.Event) {
        let keys = state.withLock { Array($0.servers.keys) }
        for key in keys { handle(event, for: key, generation: nil) }
    }

    private func tick() -> ContinuousClock.Instant? {
        forEachServer(.tick)
        return state.withLock { state in state.servers.values.compactMap(\.core.nextTick).min() }
    }

    /// Takes one event for the server `key` and carries out the core's commands. A session's
    /// event names its server's `generation`: one of a server a reload replaced finds none.
    private func handle(_ event: Core.Event, for key: SessionKey, generation: Int?) {
        let now = ContinuousClock.now
        let work = state.withLock { state -> (commands: [Core.Command], supervisors: [Int: SessionSupervisor], generation: Int)? in
            guard var server = state.servers[key], generation.map({ $0 == server.generation }) ?? true else { return nil }
            let commands = server.core.handle(event, now: now)
            if case .connectFailed = event { server.lastErrorAt = Date() }
            for case .start(let id, let isPersistent) in commands {
                let name = SupervisorName(key: key, generation: server.generation, id: id)
                if let supervisor = makeSupervisor(name, settings: server.core.settings, isPersistent: isPersistent) {
                    server.supervisors[id] = supervisor
                    state.live[name] = supervisor
                } else {
                    // No thread for it: the core forgets the session (its clients are refused
                    // below), as after a failed connect that was this machine's shortage.
                    _ = server.core.handle(.connectFailed(id, reason: Self.noDescriptors, isLocalShortage: true, clients: []), now: now)
                }
            }
            let involved = server.supervisors
            // Forget the supervisors of sessions the core no longer has.
            if case .ended(let id, _, _, _, _) = event { server.supervisors[id] = nil }
            if case .connectFailed(let id, _, _, _) = event { server.supervisors[id] = nil }
            for case .kill(let id, _) in commands { server.supervisors[id] = nil }
            for case .retire(let id) in commands { server.supervisors[id] = nil }
            state.servers[key] = server
            return (commands, involved, server.generation)
        }
        guard let work else {
            refuseOrphans(of: event, reason: "no service uses this server after the reload")
            return
        }
        if let wake = state.withLock({ $0.servers[key]?.core.nextTick }) { timer.wake(at: wake) }
        execute(work.commands, supervisors: work.supervisors, key: key, generation: work.generation)
    }

    // MARK: Commands out

    private func execute(_ commands: [Core.Command], supervisors: [Int: SessionSupervisor], key: SessionKey, generation: Int) {
        for command in commands {
            switch command {
            case .start(let id, _):
                supervisors[id]?.start()
            case .hand(let connection, let id):
                guard let supervisor = supervisors[id] else {
                    // Its session could not be made (out of descriptors) and the core forgot
                    // it: the client is routed anew once, to a session that is up if any.
                    if connection.isRetry {
                        connection.finish(.sshFailed(Self.noDescriptors), logger: logger)
                    } else {
                        connection.isRetry = true
                        handle(.clientArrived(connection, target: connection.target), for: key, generation: generation)
                    }
                    continue
                }
                if !supervisor.enqueue(connection) {
                    // It retired a moment ago (lingered out): route the client anew.
                    let orphan = Core.Orphan(client: connection, target: connection.target, isRetry: false)
                    handle(.ended(id, diedOf: nil, orphans: [orphan], servedAnyone: true, lifetime: .seconds(3600)), for: key, generation: generation)
                }
            case .refuse(let connection, let reason):
                connection.finish(.sshFailed(reason), logger: logger)
            case .probe(let id):
                supervisors[id]?.probe()
            case .kill(let id, let reason):
                supervisors[id]?.kill(because: reason)
            case .retire(let id):
                supervisors[id]?.stop(drainUntil: nil)
            case .checkRoute(let id):
                supervisors[id]?.checkRoute()
            case .burstStarted(let id, let waiting, let wait):
                logger.info("session started for a burst of connections", metadata: [
                    "ssh.host": "\(key.server)", "session": "\(id)", "clients.waiting": "\(waiting)",
                    "wait.seconds": "\((wait * 1000).rounded() / 1000)",
                ])
            case .capReached(let count):
                logger.warning("session cap reached: clients wait for a session of the server", metadata: [
                    "ssh.host": "\(key.server)", "sessions": "\(count)",
                ])
            }
        }
    }

    private static let noDescriptors = "out of file descriptors: no new session can start"

    /// A new supervisor reporting to this pool; nil when the process is out of descriptors.
    /// Call within the lock.
    private func makeSupervisor(_ name: SupervisorName, settings: SessionSettings, isPersistent: Bool) -> SessionSupervisor? {
        try? SessionSupervisor(
            id: name.id, settings: settings, isPersistent: isPersistent, factory: factory, logger: logger,
            watchdog: watchdog, health: health
        ) { [weak self] event in
            self?.report(event, from: name)
        }
    }

    /// What a session reports; its thread ends after `ended` or `connectFailed`.
    private func report(_ event: Core.Event, from name: SupervisorName) {
        switch event {
        case .ended, .connectFailed:
            state.withLock { _ = $0.live.removeValue(forKey: name) }
        default:
            break
        }
        handle(event, for: name.key, generation: name.generation)
    }

    private func refuseOrphans(of event: Core.Event, reason: String) {
        switch event {
        case .clientArrived(let connection, _, _):
            connection.finish(.sshFailed(reason), logger: logger)
        case .ended(_, _, let orphans, _, _):
            for orphan in orphans { orphan.client.finish(.sshFailed(reason), logger: logger) }
        case .connectFailed(_, let failure, _, let clients):
            for client in clients { client.finish(.sshFailed(failure), logger: logger) }
        default:
            break
        }
    }

    // MARK: Status

    /// The sessions and connect history of the server `key` uses.
    func status(of key: SessionKey) -> ServerStatus {
        state.withLock { state in
            guard let server = state.servers[key] else { return ServerStatus(state: .idle, sessionsUp: 0) }
            let core = server.core
            let now = ContinuousClock.now
            let up = core.sessionsUp
            var status = ServerStatus(
                state: .idle, sessionsUp: up, sessionsStuck: core.stuckCount(at: now), isAtCap: core.isAtCap,
                oldestSessionSeconds: core.oldestUpSince.map { (now - $0).seconds },
                connectFailures: core.connectFailures, lastError: core.backoff.lastError, lastErrorAt: server.lastErrorAt)
            status.opens = StatusReport.OpenQueue(
                waiting: core.waitingForChannel, waitSeconds: core.nextClientWait(at: now),
                perSecond: core.opensPerSecond(at: now),
                burstSessions: core.burstSessions, overloadRefusals: core.overloadRefusals)
            if let wait = core.backoff.wait(now: now), up == 0 {
                status.state = .backingOff
                status.retryAt = Date().addingTimeInterval(wait)
            } else if up > 0 {
                status.state = .up
            } else if core.isConnecting {
                status.state = .connecting
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
                retiring += server.supervisors.values
                state.servers[key] = nil
            }
            for (key, settings) in byKey {
                if var server = state.servers[key] {
                    if server.core.settings != settings {
                        // Running sessions keep their settings; the next ones get the new.
                        _ = server.core.handle(.retireAll, now: .now)
                        retiring += server.supervisors.values
                        server.supervisors.removeAll()
                    }
                    server.core.update(settings: settings)
                    state.servers[key] = server
                } else {
                    state.addServer(settings)
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
            for key in state.servers.keys { _ = state.servers[key]!.core.handle(.stop, now: .now) }
            return Array(state.live.values)
        }
        for supervisor in supervisors { supervisor.stop(drainUntil: deadline) }
        timer.stop()
    }

    /// Whether any session's thread is still running.
    var hasLiveLoops: Bool {
        state.withLock { !$0.live.isEmpty }
    }
}
