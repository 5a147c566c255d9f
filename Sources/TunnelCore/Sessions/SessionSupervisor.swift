import Glibc
import Logging
import Platform
import TunnelConfig

/// The thread that owns one SSH session to a server, for the session's one life: it
/// connects (through the factory), drives the session's event loop until the session ends,
/// and reports each step to the pool as an event value. It decides nothing about other
/// sessions: the pool's decision core does, and sends it commands through its mailbox.
///
/// Clients reach it through `enqueue`, from the pool. Once it has retired it takes no more
/// clients; a client it could not serve is handed back in an event, never dispatched by it.
final class SessionSupervisor: @unchecked Sendable {
    typealias Event = ServerSessions<Connection>.Event

    private struct Mailbox {
        var inbox: [Connection] = []
        var isRetired = false
        var stopping = SessionEventLoop.Stopping.no
        /// Probe now: the session may be dead.
        var mustProbe = false
        /// Look up the route to the server: the network changed.
        var mustCheckRoute = false
        /// Die now, for this reason.
        var killReason: String?
    }

    /// The session's number within its server.
    let id: Int
    let settings: SessionSettings
    let isPersistent: Bool
    private let factory: any SessionFactory
    private let report: @Sendable (Event) -> Void
    private let logger: Logger
    private let watchdog: Watchdog?
    private let health: HealthBoard?
    private let wakeup: Wakeup
    private let readiness: SessionReadiness
    private let mailbox = Locked(Mailbox())

    /// - `report`: where its events go (the pool, for this server).
    /// - `health`: where its health probes report, for a persistent session.
    /// Throws when the process is out of descriptors.
    init(id: Int, settings: SessionSettings, isPersistent: Bool, factory: any SessionFactory, logger: Logger,
         watchdog: Watchdog?, health: HealthBoard?, report: @escaping @Sendable (Event) -> Void) throws {
        wakeup = try Wakeup()
        readiness = try SessionReadiness(wakeup: wakeup.readEnd)
        self.id = id
        self.settings = settings
        self.isPersistent = isPersistent
        self.factory = factory
        self.logger = logger
        self.watchdog = watchdog
        self.health = health
        self.report = report
    }

    /// Starts the supervisor's thread.
    func start() {
        DetachedThread.start(name: "session \(settings.key.server)") { [self] in run() }
    }

    // MARK: Commands (any thread)

    /// Hands a client to this session. Returns `false` if it has retired.
    func enqueue(_ connection: Connection) -> Bool {
        let taken = mailbox.withLock { box -> Bool in
            guard !box.isRetired else { return false }
            box.inbox.append(connection)
            return true
        }
        if taken { wakeup.signal() }
        return taken
    }

    /// Asks the session to end once its connections are done, closing what is left at
    /// `deadline`. With no deadline (a reload removed or changed its services) it also takes
    /// no more clients.
    func stop(drainUntil deadline: ContinuousClock.Instant?) {
        mailbox.withLock { box in
            box.stopping = .whenIdle(deadline: deadline)
            if deadline == nil { box.isRetired = true }
        }
        wakeup.signal()
    }

    /// Probes the session now: it dies unless the server answers within seconds.
    func probe() {
        mailbox.withLock { $0.mustProbe = true }
        wakeup.signal()
    }

    /// Looks up the route to the server and reports it (`routeChecked`).
    func checkRoute() {
        mailbox.withLock { $0.mustCheckRoute = true }
        wakeup.signal()
    }

    /// Ends the session now: it cannot work any more.
    func kill(because reason: String) {
        mailbox.withLock { $0.killReason = reason }
        wakeup.signal()
    }

    private var metadata: Logger.Metadata {
        var metadata: Logger.Metadata = ["ssh.host": "\(settings.key.server)", "ssh.user": "\(settings.key.user)", "session": "\(id)"]
        if !settings.key.jump.isEmpty { metadata["ssh.jump"] = "\(settings.key.jump.map(\.login).joined(separator: ","))" }
        return metadata
    }

    // MARK: The thread

    private func run() {
        logger.debug("session connecting", metadata: metadata)
        let started = ContinuousClock.now
        let session: any TunnelSession
        do {
            session = try factory.connect(settings, logger: logger)
        } catch {
            let reason = "\(error)"
            var details = metadata
            details["error"] = "\(reason)"
            logger.error("session connect failed", metadata: details)
            report(.connectFailed(id, reason: reason, isLocalShortage: (error as? ConnectFailure)?.isLocalShortage ?? false, clients: retire()))
            return
        }
        report(.connected(id, route: RouteCheck.of(socket: session.socket)))
        var upMetadata = metadata
        upMetadata["connect.seconds"] = "\((ContinuousClock.now - started).seconds.threeDecimals)"
        logger.info("session up", metadata: upMetadata)

        let loop = SessionEventLoop(session: session, readiness: readiness, settings: settings, logger: logger, health: isPersistent ? health : nil)
        let ending = drive(loop, socket: session.socket)
        var downMetadata = metadata
        var diedOf: String?
        switch ending {
        case .lingeredOut:
            downMetadata["reason"] = "idle for \(settings.linger.secondsText) s (linger)"
            session.disconnect(reason: "idle")
        case .stopped:
            let removed = mailbox.withLock { $0.stopping == .whenIdle(deadline: nil) }
            downMetadata["reason"] = removed ? "no service uses it after the reload" : "tunneld is stopping"
            session.disconnect(reason: "shutting down")
        case .died(let reason):
            downMetadata["reason"] = "\(reason)"
            diedOf = reason
        }
        logger.info("session down", metadata: downMetadata)
        // Clients that had no channel yet get one more chance, on another session.
        let orphans = (loop.orphans + retire()).map { connection in
            let orphan = ServerSessions<Connection>.Orphan(client: connection, target: connection.target, isRetry: connection.isRetry)
            connection.isRetry = true
            return orphan
        }
        report(.ended(id, diedOf: diedOf, orphans: orphans, servedAnyone: loop.hasOpenedChannels, lifetime: ContinuousClock.now - started))
    }

    /// Retires now and returns the clients that were still waiting.
    private func retire() -> [Connection] {
        mailbox.withLock { box in
            box.isRetired = true
            let taken = box.inbox
            box.inbox.removeAll()
            return taken
        }
    }

    /// What the loop last reported, so that a pass reports only a change.
    private struct Reported: Equatable {
        var load: Int
        var openUnderWay: ServerSessions<Connection>.OpenUnderWay?
        var isProbing: Bool
        var opens: ServerSessions<Connection>.OpenQueue
    }

    /// Runs the event loop until the session ends: hands it clients and commands, reports
    /// its load, its open queue and the open under way when they change, hands back the
    /// clients queued behind a stuck open, and sleeps in the loop's `wait` between passes.
    private func drive(_ loop: SessionEventLoop, socket: Int32) -> SessionEventLoop.Ending {
        var reported: Reported?
        let beat = watchdog?.join()
        defer { watchdog?.leave(beat) }
        while true {
            let (arrived, stopping, mustProbe, mustCheckRoute, killReason) = mailbox.withLock { box in
                let commands = (box.inbox, box.stopping, box.mustProbe, box.mustCheckRoute, box.killReason)
                box.inbox.removeAll()
                box.mustProbe = false
                box.mustCheckRoute = false
                return commands
            }
            for connection in arrived { loop.add(connection) }
            loop.stopping = stopping
            if let killReason { loop.die(because: killReason) }
            if mustProbe { loop.markSuspect() }
            if mustCheckRoute { report(.routeChecked(id, RouteCheck.of(socket: socket))) }

            if let ending = loop.step() {
                if ending == .lingeredOut && !retireIfIdle() { continue }
                return ending
            }
            let now = ContinuousClock.now
            let inbox = mailbox.withLock { $0.inbox.count }
            let state = Reported(load: loop.load + inbox,
                                 openUnderWay: loop.openUnderWay.map { .init(target: $0.target, since: $0.since) },
                                 isProbing: loop.isProbing,
                                 opens: .init(waiting: loop.waitingForChannel + inbox, answerSeconds: loop.openAnswerSeconds, answered: loop.opensAnswered))
            if state != reported {
                reported = state
                report(.report(id, load: state.load, openUnderWay: state.openUnderWay, isProbing: state.isProbing, opens: state.opens))
            }
            handBackQueuedClientsIfStuck(loop, now: now, opens: state.opens)
            watchdog?.beat(beat)

            if loop.wait(bound: { [watchdog] in watchdog?.bound($0) ?? $0 }) { wakeup.drain() }
        }
    }

    /// Retires if no client waits. Called when the session lingered out.
    private func retireIfIdle() -> Bool {
        mailbox.withLock { box in
            guard box.inbox.isEmpty else { return false }
            box.isRetired = true
            return true
        }
    }

    /// libssh2 has one open under way per session: when it has waited past the stuck bound,
    /// the clients queued behind it for other targets are handed back to go to a sibling
    /// (those for the stuck target stay: they would be stuck anywhere).
    private func handBackQueuedClientsIfStuck(_ loop: SessionEventLoop, now: ContinuousClock.Instant, opens: ServerSessions<Connection>.OpenQueue) {
        guard let open = loop.openUnderWay, loop.hasQueuedClients, now - open.since >= ServerSessions<Connection>.stuckOpenBound else { return }
        let moving = loop.takeQueuedClients(keeping: open.target)
        guard !moving.isEmpty else { return }
        var opens = opens
        opens.waiting = loop.waitingForChannel
        report(.report(id, load: loop.load + mailbox.withLock { $0.inbox.count }, openUnderWay: .init(target: open.target, since: open.since), isProbing: loop.isProbing, opens: opens))
        for connection in moving {
            report(.clientArrived(connection, target: connection.target, avoiding: id))
        }
    }
}
