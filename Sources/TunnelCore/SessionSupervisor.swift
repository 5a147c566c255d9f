import Glibc
import Logging
import SSHTransport
import TunnelConfig

/// The thread that owns one SSH session to a server: it connects, drives the session's
/// event loop until the session ends, and, for the persistent session of a server, connects
/// again (with the pool's backoff).
///
/// Clients reach it through `enqueue`, from the listener thread; commands (`stop`,
/// `suspect`) likewise. What the pool needs to route clients (phase, load, a stuck open) is
/// published in `gauge`. Once it has retired it takes no more clients.
final class SessionSupervisor: @unchecked Sendable {
    /// Where the supervisor is in its life.
    enum Phase: Equatable, Sendable {
        case connecting
        case up
        /// Persistent only: waiting out a backoff before connecting again.
        case backingOff
        case retired
    }

    /// What the pool reads to route clients.
    struct Gauge: Sendable {
        var phase = Phase.connecting
        /// Live connections plus clients waiting, here or in the inbox.
        var load = 0
        /// Since when the channel open under way has waited, if one is.
        var busySince: ContinuousClock.Instant?
        /// Told that the session may be dead, and not yet proven alive.
        var isSuspect = false
        /// When the session came up, while it is up.
        var upSince: ContinuousClock.Instant?
    }

    private struct Mailbox {
        var inbox: [Connection] = []
        var gauge = Gauge()
        var stopping = SessionEventLoop.Stopping.no
        /// Local addresses after a network change or wake, for the loop to check its socket against.
        var suspicion: Set<String>?
    }

    let settings: SessionSettings
    let isPersistent: Bool
    private unowned let pool: SessionPool
    private let logger: Logger
    private let wakeup: Wakeup
    private let mailbox = Locked(Mailbox())

    /// Throws when the process is out of descriptors.
    init(settings: SessionSettings, isPersistent: Bool, pool: SessionPool, logger: Logger) throws {
        wakeup = try Wakeup()
        self.settings = settings
        self.isPersistent = isPersistent
        self.pool = pool
        self.logger = logger
    }

    /// Starts the supervisor's thread.
    func start() {
        DetachedThread.start(name: "session \(settings.key.server)") { [self] in run() }
    }

    /// The state the pool routes by.
    var gauge: Gauge {
        mailbox.withLock { $0.gauge }
    }

    /// Hands a client to this session. Returns `false` if it has retired.
    func enqueue(_ connection: Connection) -> Bool {
        let taken = mailbox.withLock { box -> Bool in
            guard box.gauge.phase != .retired else { return false }
            box.inbox.append(connection)
            box.gauge.load += 1
            return true
        }
        if taken { wakeup.signal() }
        return taken
    }

    /// Asks the session to end once its connections are done, closing what is left at
    /// `deadline`. With no deadline (a reload removed or changed its services) it also takes
    /// no more clients: the pool starts a new session for those.
    func stop(drainUntil deadline: ContinuousClock.Instant?) {
        mailbox.withLock { box in
            box.stopping = .whenIdle(deadline: deadline)
            if deadline == nil && box.gauge.phase != .retired { box.gauge.phase = .retired }
        }
        wakeup.signal()
    }

    /// Tells the session it may be dead (sleep, network change, `tunneld reconnect`): it is
    /// probed at once and dies unless the server answers within seconds; if its socket's
    /// local address is no longer among `localAddresses`, it dies at once.
    func suspect(localAddresses: Set<String>) {
        mailbox.withLock { box in
            guard box.gauge.phase == .up else { return }
            box.suspicion = localAddresses
            box.gauge.isSuspect = true
        }
        wakeup.signal()
    }

    private var metadata: Logger.Metadata {
        var metadata: Logger.Metadata = ["ssh.host": "\(settings.key.server)", "ssh.user": "\(settings.key.user)"]
        if !settings.key.jump.isEmpty { metadata["ssh.jump"] = "\(settings.key.jump.map(\.login).joined(separator: ","))" }
        return metadata
    }

    private func setPhase(_ phase: Phase) {
        mailbox.withLock { box in
            if box.gauge.phase != .retired { box.gauge.phase = phase }
            box.gauge.upSince = phase == .up ? .now : nil
        }
    }

    private var isStopping: Bool {
        mailbox.withLock { box in
            if case .whenIdle = box.stopping { return true }
            return false
        }
    }

    private func takeInbox() -> [Connection] {
        mailbox.withLock { box in
            let taken = box.inbox
            box.inbox.removeAll()
            return taken
        }
    }

    /// Retires now and returns the clients that were still waiting.
    private func retire() -> [Connection] {
        mailbox.withLock { box in
            box.gauge.phase = .retired
            let taken = box.inbox
            box.inbox.removeAll()
            return taken
        }
    }

    /// Retires if no client waits. Called when the session lingered out.
    private func retireIfIdle() -> Bool {
        mailbox.withLock { box in
            guard box.inbox.isEmpty else { return false }
            box.gauge.phase = .retired
            return true
        }
    }

    // MARK: The thread

    private func run() {
        let connector = SessionConnector(key: settings.key, connectTimeout: settings.connectTimeout, logger: logger, jumpPool: pool)
        while !(isStopping && !hasWaitingClients) {
            if isPersistent && !hasWaitingClients, let wait = pool.backoffWait(for: settings.key) {
                setPhase(.backingOff)
                waitOutBackoff(seconds: wait)
                continue
            }
            setPhase(.connecting)
            logger.debug("session connecting", metadata: metadata)
            let started = ContinuousClock.now
            let session: SSHSession
            do {
                session = try connector.connect()
            } catch {
                let reason = "\(error)"
                let isLocalShortage = (error as? ConnectFailure)?.isLocalShortage ?? false
                let delay = isLocalShortage ? 1 : pool.recordFailure(for: settings.key, reason: reason)
                var details = metadata
                details["error"] = "\(reason)"
                if isPersistent { details["retry.seconds"] = "\(delay.secondsText)" }
                logger.error("session connect failed", metadata: details)
                if !isPersistent {
                    for connection in retire() { connection.finish(.sshFailed(reason), logger: logger) }
                    pool.supervisorEnded(self)
                    return
                }
                for connection in takeInbox() { connection.finish(.sshFailed(reason), logger: logger) }
                if isLocalShortage { waitOutBackoff(seconds: delay) }
                continue
            }
            pool.recordSuccess(for: settings.key)
            setPhase(.up)
            var upMetadata = metadata
            upMetadata["connect.seconds"] = "\((ContinuousClock.now - started).seconds.threeDecimals)"
            logger.info("session up", metadata: upMetadata)

            let loop = SessionEventLoop(session: session, settings: settings, logger: logger, health: isPersistent ? pool.health : nil)
            let ending = drive(loop, socket: session.socket)
            var downMetadata = metadata
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
            }
            logger.info("session down", metadata: downMetadata)
            mailbox.withLock { box in
                box.gauge.isSuspect = false
                box.suspicion = nil
                box.gauge.busySince = nil
                box.gauge.upSince = nil
            }

            switch ending {
            case .lingeredOut:
                pool.supervisorEnded(self)
                return
            case .stopped:
                continue
            case .died(let reason):
                if !loop.hasOpenedChannels && ContinuousClock.now - started < .seconds(2) {
                    // A server that drops sessions right after login must not be hammered.
                    _ = pool.recordFailure(for: settings.key, reason: reason)
                }
                // Clients that had no channel yet get one more chance, on another session.
                var waiting = loop.orphans
                if !isPersistent { waiting += retire() }
                if !isPersistent { pool.supervisorEnded(self) }
                for connection in waiting {
                    if connection.isRetry || isStopping {
                        connection.finish(isStopping ? .shutdown : .sshFailed(reason), logger: logger)
                    } else {
                        connection.isRetry = true
                        pool.dispatch(connection)
                    }
                }
                if !isPersistent { return }
            }
        }
        for connection in retire() { connection.finish(.shutdown, logger: logger) }
        pool.supervisorEnded(self)
    }

    /// Runs the event loop until the session ends: hands it clients and commands, publishes
    /// its gauge, moves clients queued behind a stuck open to a sibling session, and sleeps
    /// in `poll` between passes.
    private func drive(_ loop: SessionEventLoop, socket: Int32) -> SessionEventLoop.Ending {
        var pollSet: [pollfd] = []
        let watchdog = pool.watchdog
        let beat = watchdog?.join()
        defer { watchdog?.leave(beat) }
        while true {
            for connection in takeInbox() { loop.add(connection) }
            let (stopping, suspicion) = mailbox.withLock { box in
                let suspicion = box.suspicion
                box.suspicion = nil
                return (box.stopping, suspicion)
            }
            loop.stopping = stopping
            if let suspicion {
                if let local = Socket.localEndpoint(of: socket)?.host, !suspicion.contains(local) {
                    loop.die(because: "this machine no longer has the address \(local) the session used")
                } else if !Socket.hasRoute(toPeerOf: socket) {
                    loop.die(because: "no route to the server: the network is down")
                } else {
                    loop.markSuspect()
                }
            }

            if let ending = loop.step(pollSet: pollSet) {
                if ending == .lingeredOut && !retireIfIdle() {
                    pollSet = []
                    continue
                }
                return ending
            }
            let isSuspect = loop.isProbing
            mailbox.withLock { box in
                box.gauge.load = loop.load + box.inbox.count
                box.gauge.busySince = loop.busySince
                if !isSuspect { box.gauge.isSuspect = false }
            }
            moveQueuedClientsIfStuck(loop)
            watchdog?.beat(beat)

            pollSet = loop.buildPollSet(wakeup: wakeup.readEnd)
            let deadline = loop.nextDeadline
            let timeout = deadline <= .now ? 0 : Socket.milliseconds(until: deadline + .milliseconds(2))
            _ = poll(&pollSet, nfds_t(pollSet.count), watchdog?.bound(timeout) ?? timeout)
            if pollSet[0].revents != 0 { wakeup.drain() }
        }
    }

    /// libssh2 has one open under way per session: when it has waited longer than the stuck
    /// bound, the clients queued behind it go to a sibling session (once each).
    private func moveQueuedClientsIfStuck(_ loop: SessionEventLoop) {
        guard let since = loop.busySince, loop.hasQueuedClients, ContinuousClock.now - since >= SessionSettings.stuckOpenBound else { return }
        let moving = loop.takeQueuedClients()
        mailbox.withLock { $0.gauge.load = loop.load + $0.inbox.count }
        for connection in moving {
            connection.hasMoved = true
            pool.dispatch(connection, avoiding: self)
        }
    }

    /// Waits until the backoff ends, a client arrives (the pool sends one only when it may
    /// start a connect at once), or the supervisor is told to stop.
    private func waitOutBackoff(seconds: Double) {
        let until = ContinuousClock.now + Duration(seconds: seconds)
        while ContinuousClock.now < until && !isStopping && !hasWaitingClients {
            var descriptor = pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, Socket.milliseconds(until: until))
            wakeup.drain()
        }
    }

    private var hasWaitingClients: Bool {
        !mailbox.withLock { $0.inbox.isEmpty }
    }
}
