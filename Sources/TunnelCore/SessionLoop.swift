import Foundation
import Logging
import SSHTransport
import TunnelConfig

/// The thread that owns one SSH session for a session key: it connects, pumps until the
/// session ends, and for a persistent key connects again (with the pool's backoff).
///
/// Clients reach it through `enqueue`, from the listener thread. Once it has retired, it
/// takes no more clients and the pool starts a new loop for the next one.
final class SessionLoop {
    let settings: SessionSettings
    private unowned let pool: SessionPool
    private let logger: Logger
    private let wakeup = Wakeup()

    private let lock = NSLock()
    private var inbox: [Connection] = []
    private var hasRetired = false
    private var stopping = SessionPump.Stopping.no

    init(settings: SessionSettings, pool: SessionPool, logger: Logger) {
        self.settings = settings
        self.pool = pool
        self.logger = logger
    }

    /// Starts the loop's thread.
    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "session \(settings.key.server)"
        thread.start()
    }

    /// Hands a client to this loop. Returns `false` if the loop has retired.
    func enqueue(_ connection: Connection) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !hasRetired else { return false }
        inbox.append(connection)
        wakeup.signal()
        return true
    }

    /// Asks the loop to end once its connections are done, closing what is left at
    /// `deadline`. With no deadline (a reload removed or changed its services) it also takes
    /// no more clients: the pool starts a new loop for those.
    func stop(drainUntil deadline: ContinuousClock.Instant?) {
        lock.lock()
        stopping = .whenIdle(deadline: deadline)
        if deadline == nil { hasRetired = true }
        lock.unlock()
        wakeup.signal()
    }

    private var currentStopping: SessionPump.Stopping {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    private var shouldStop: Bool {
        if case .whenIdle = currentStopping { return true }
        return false
    }

    private var inboxIsEmpty: Bool {
        lock.lock()
        defer { lock.unlock() }
        return inbox.isEmpty
    }

    private func takeInbox() -> [Connection] {
        lock.lock()
        defer { lock.unlock() }
        let taken = inbox
        inbox.removeAll()
        return taken
    }

    /// Retires if no client waits. Called when the session lingered out.
    private func retireIfIdle() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard inbox.isEmpty else { return false }
        hasRetired = true
        return true
    }

    /// Retires now and returns the clients that were still waiting.
    private func retire() -> [Connection] {
        lock.lock()
        defer { lock.unlock() }
        hasRetired = true
        let taken = inbox
        inbox.removeAll()
        return taken
    }

    private var metadata: Logger.Metadata {
        ["ssh.host": "\(settings.key.server)", "ssh.user": "\(settings.key.user)"]
    }

    private func run() {
        let connector = SessionConnector(key: settings.key, connectTimeout: settings.connectTimeout, logger: logger)
        while !(shouldStop && inboxIsEmpty) {
            if let wait = pool.backoffRemaining(for: settings.key) {
                // Only a persistent loop waits out a backoff; the pool turns clients away meanwhile.
                sleep(seconds: wait)
                continue
            }
            logger.debug("session connecting", metadata: metadata)
            let started = ContinuousClock.now
            let session: SSHSession
            do {
                session = try connector.connect()
            } catch {
                let reason = "\(error)"
                let delay = pool.recordFailure(for: settings.key, reason: reason)
                var details = metadata
                details["error"] = "\(reason)"
                details["retry.seconds"] = "\(SessionPump.format(delay))"
                logger.error("session connect failed", metadata: details)
                if !settings.isPersistent {
                    for connection in retire() { connection.finish(.sshFailed(reason), logger: logger) }
                    pool.loopEnded(self)
                    return
                }
                for connection in takeInbox() { connection.finish(.sshFailed(reason), logger: logger) }
                continue
            }
            pool.recordSuccess(for: settings.key)
            var upMetadata = metadata
            upMetadata["connect.seconds"] = "\((ContinuousClock.now - started).seconds.threeDecimals)"
            logger.info("session up", metadata: upMetadata)

            let pump = SessionPump(session: session, settings: settings, wakeup: wakeup, logger: logger)
            let ending = pump.run(takeNewClients: takeInbox, stopping: { currentStopping }, retireIfIdle: retireIfIdle)
            var downMetadata = metadata
            switch ending {
            case .lingeredOut:
                downMetadata["reason"] = "idle for \(SessionPump.format(settings.linger)) s (linger)"
                session.disconnect(reason: "idle")
            case .stopped:
                if case .whenIdle(deadline: nil) = currentStopping {
                    downMetadata["reason"] = "no service uses it after the reload"
                } else {
                    downMetadata["reason"] = "tunneld is stopping"
                }
                session.disconnect(reason: "shutting down")
            case .died(let reason):
                downMetadata["reason"] = "\(reason)"
            }
            logger.info("session down", metadata: downMetadata)
            pool.recordDown(for: settings.key)

            if case .died = ending, !settings.isPersistent {
                // Waiting clients get one more chance, on a new session.
                let waiting = pump.orphans + retire()
                pool.loopEnded(self)
                for connection in waiting {
                    if connection.isRetry {
                        connection.finish(.sshFailed(Self.reason(of: ending)), logger: logger)
                    } else {
                        connection.isRetry = true
                        pool.dispatch(connection)
                    }
                }
                return
            }
            if case .lingeredOut = ending {
                pool.loopEnded(self)
                return
            }
            for connection in pump.orphans {
                if shouldStop {
                    connection.finish(.shutdown, logger: logger)
                } else {
                    _ = enqueue(connection)
                }
            }
        }
        for connection in retire() { connection.finish(.shutdown, logger: logger) }
        pool.loopEnded(self)
    }

    private static func reason(of ending: SessionPump.Ending) -> String {
        if case .died(let reason) = ending { return reason }
        return "session ended"
    }

    /// Sleeps up to `seconds`, waking early when told to stop.
    private func sleep(seconds: Double) {
        var descriptor = pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)
        _ = poll(&descriptor, 1, Int32(seconds * 1000) + 1)
        wakeup.drain()
    }
}
