import Glibc
import Logging
import SSHTransport
import TunnelConfig

/// The event loop of one connected SSH session: one pass (`step`) opens channels for new
/// clients, copies bytes both ways for every channel, probes the server when it is quiet,
/// and says when the session lingered out, was told to stop, or died.
///
/// It owns the session, its channels and its clients; it is driven by one thread (its
/// supervisor), which hands it clients (`add`) and commands (`stopping`, `markSuspect`) and
/// reads its state (`load`, `busySince`). It reports what happened as a value (`Ending`)
/// and never calls up.
final class SessionEventLoop {
    /// Whether the session should end once its connections are done.
    enum Stopping: Equatable {
        /// Keep going: linger, or stay up if persistent.
        case no
        /// End as soon as no connection is left; at `deadline`, if any, close the rest.
        case whenIdle(deadline: ContinuousClock.Instant?)
    }

    /// Why the session ended.
    enum Ending: Equatable {
        case lingeredOut
        case stopped
        case died(String)
    }

    private let session: any TunnelSession
    private let settings: SessionSettings
    /// Where health probes report, on the persistent session only.
    private let health: HealthBoard?
    /// When each service's next health probe is due.
    private var healthDue: [String: ContinuousClock.Instant] = [:]
    private let logger: Logger
    private let clock: () -> ContinuousClock.Instant

    private var opener: ChannelOpener
    private var connections: [Connection] = []
    private var closingChannels: [any TunnelChannel] = []
    /// The connection of each client entry of the last poll set, in its order (a connection
    /// with separate input and output descriptors has two entries).
    private var polledConnections: [Connection] = []
    private var idleSince: ContinuousClock.Instant?
    /// When the unanswered probe was sent, if one is out.
    private var probeSentAt: ContinuousClock.Instant?
    /// Since when a client (or a suspicion) needs the probe answered quickly.
    private var urgentSince: ContinuousClock.Instant?
    /// Why the session must end at the next pass, if it must.
    private var pendingDeath: String?
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    private let pump: ChannelPump
    /// Stop reading clients while the session's unsent output is above this.
    private let outputHighWater = 4 << 20

    var stopping = Stopping.no

    /// Whether any client's channel opened on this session: a session that dies before
    /// serving anyone counts as a failed connect.
    private(set) var hasOpenedChannels = false

    /// Clients that had no channel yet when the session ended; the supervisor moves them on.
    private(set) var orphans: [Connection] = []

    /// - `health`: where the settings' health probes report; nil for a session that does not probe.
    init(session: any TunnelSession, settings: SessionSettings, logger: Logger, health: HealthBoard? = nil,
         clock: @escaping () -> ContinuousClock.Instant = { .now }) {
        self.session = session
        self.settings = settings
        self.health = health
        self.logger = logger
        self.clock = clock
        opener = ChannelOpener(openTimeout: settings.openTimeout)
        pump = ChannelPump(scratch: scratch)
        idleSince = clock()
        if health != nil {
            for check in settings.healthChecks { healthDue[check.service] = idleSince }
        }
    }

    deinit {
        scratch.deallocate()
    }

    // MARK: Commands and state

    /// Takes a client: its channel is opened in turn. On a session that has been quiet, the
    /// server is probed first, so that a dead session is found within seconds, not a keepalive.
    func add(_ connection: Connection) {
        let now = clock()
        if (now - session.lastReceived).seconds >= settings.keepalive.interval {
            requestProbe(now: now, urgent: true)
        }
        opener.enqueue(connection, now: now)
        idleSince = nil
    }

    /// Treats the session as possibly dead (after a sleep or a network change): probes it now,
    /// and it dies unless the server answers within the short bound.
    func markSuspect() {
        requestProbe(now: clock(), urgent: true)
    }

    /// Ends the session at the next pass, e.g. because its local address is gone.
    func die(because reason: String) {
        pendingDeath = reason
    }

    /// Whether a probe that must be answered soon is out (the session is suspect).
    var isProbing: Bool { urgentSince != nil && probeSentAt != nil }

    /// Live connections plus clients waiting for a channel.
    var load: Int { connections.count + opener.clientCount }

    /// Since when the channel open under way has waited, if one is.
    var busySince: ContinuousClock.Instant? { opener.busySince }

    /// Where the open under way goes, and since when, if one is (probes excluded).
    var openUnderWay: (target: Endpoint, since: ContinuousClock.Instant)? { opener.openUnderWay }

    /// Whether clients wait behind the open under way.
    var hasQueuedClients: Bool { opener.queue.contains { if case .client = $0 { return true } else { return false } } }

    /// The clients waiting behind the open under way, taken out to go to a sibling session;
    /// those for `keeping` (the stuck open's own target) stay.
    func takeQueuedClients(keeping: Endpoint? = nil) -> [Connection] {
        opener.takeQueuedClients(keeping: keeping)
    }

    // MARK: One pass

    /// One pass over everything that may have progressed, given the events of `pollSet`
    /// (from `buildPollSet`). Returns an ending, or nil to go on.
    func step(pollSet: [pollfd]) -> Ending? {
        if case .whenIdle(let deadline?) = stopping, deadline <= clock() {
            closeAll(.shutdown)
            return .stopped
        }
        if let reason = pendingDeath { return die(reason) }
        let sessionEvents = pollSet.count > 1 ? pollSet[1].revents : 0
        do {
            if sessionEvents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                return die("the connection to the server was lost")
            }
            try session.flush()
            if session.isPeerClosed { return die("the server closed the connection") }

            try progressOpens()
            var clientEvents: [ObjectIdentifier: Int16] = [:]
            for (index, connection) in polledConnections.enumerated() where index + 2 < pollSet.count && pollSet[index + 2].revents != 0 {
                clientEvents[ObjectIdentifier(connection), default: 0] |= pollSet[index + 2].revents
            }
            for connection in connections {
                try pumpOne(connection, revents: clientEvents[ObjectIdentifier(connection)] ?? 0)
            }
            closingChannels.removeAll { $0.free() }
            try settle()
            connections.removeAll { $0.isClosed }
            if sessionEvents & Int16(POLLIN) != 0 && connections.isEmpty && opener.current == nil && !opener.hasProbe {
                // The server spoke while no channel was there to read it: a probe takes it in.
                opener.enqueueProbe()
                try progressOpens()
            }
            if let ending = try checkLiveness() { return ending }
            try runDueHealthChecks()
            // The probes above may have read data for channels, or opened one: deliver it now.
            try settle()
            connections.removeAll { $0.isClosed }
            try session.acknowledgeReads()
            try session.flush()
        } catch {
            return die(Self.describe(error))
        }
        return checkIdle()
    }

    /// Every libssh2 call may read the session socket and keep what it read for others: data
    /// and EOFs for channels pumped earlier in this pass, window room, the answer to the open
    /// under way. The socket then no longer says so, so finish that work now, until a pass
    /// finds none (bounded, so one busy channel cannot hold the loop).
    private func settle() throws {
        for _ in 0..<16 {
            var moved = false
            if opener.current != nil {
                let before = connections.count
                let wasBusySince = opener.busySince
                try progressOpens()
                moved = connections.count != before || opener.busySince != wasBusySince
            }
            for connection in connections where !connection.isClosed {
                guard let channel = connection.channel else { continue }
                let canRead = connection.toClient.isEmpty && !connection.serverEOF && channel.hasBufferedInput
                let canWrite = !connection.toServer.isEmpty && channel.canWrite
                if canRead || canWrite {
                    try pumpOne(connection, revents: 0)
                    moved = true
                }
            }
            if !moved { return }
        }
    }

    // MARK: Channel opens

    private func progressOpens() throws {
        var opened: [Connection] = []
        // What happened before a session failure still happened: a channel that opened joins
        // the connections, so that it ends with the session, not in no list at all.
        let progress = opener.progress(on: session, now: clock())
        for event in progress.events {
            switch event {
            case .opened(let connection, let channel):
                hasOpenedChannels = true
                connection.stats.channelOpened(after: (clock() - connection.acceptedAt).seconds)
                connection.replySocksSuccess()
                connection.channel = channel
                connections.append(connection)
                opened.append(connection)
            case .refused(let connection, let reason):
                connection.finish(.refused(reason), logger: logger)
            case .expired(let connection, let reason):
                connection.finish(.sshFailed(reason), logger: logger)
            case .late(let channel):
                if !channel.free() { closingChannels.append(channel) }
            case .probeAnswered:
                probeSentAt = nil
                urgentSince = nil
            case .healthy(let check, let channel):
                if !channel.free() { closingChannels.append(channel) }
                health?.record(service: check.service, isUp: true, detail: "ok")
            case .unhealthy(let check, let reason):
                health?.record(service: check.service, isUp: false, detail: reason)
            }
        }
        if let failure = progress.failure { throw failure }
        // libssh2 stops reading at the open confirmation; what came with it (a server's
        // banner) waits in its transport buffer, where neither poll nor the packet list shows
        // it. Reading the new channel now takes it in and delivers it.
        for connection in opened { try pumpOne(connection, revents: 0) }
    }

    // MARK: Liveness

    /// Sends a probe unless one is out. A channel-open probe when no open is under way (its
    /// answer is consumed); else a global request, since the open slot is taken.
    private func requestProbe(now: ContinuousClock.Instant, urgent: Bool) {
        if urgent && urgentSince == nil { urgentSince = now }
        guard probeSentAt == nil else { return }
        probeSentAt = now
        if opener.current == nil && opener.queue.isEmpty {
            opener.enqueueProbe()
        } else {
            do {
                try session.sendKeepalive()
            } catch {
                // The session failed; the next pass finds out.
            }
        }
    }

    /// Keepalive: a probe after `interval` of silence; dead after `silenceLimit`, or after the
    /// short bound when a client waits on a quiet session or the session is suspect.
    private func checkLiveness() throws -> Ending? {
        let now = clock()
        if let sent = probeSentAt, session.lastReceived > sent {
            probeSentAt = nil
            urgentSince = nil
        }
        let silence = (now - session.lastReceived).seconds
        if silence > settings.silenceLimit {
            return die("no answer from the server for \(Int(silence)) s (keepalive)")
        }
        if let urgentSince, probeSentAt != nil, (now - urgentSince).seconds >= settings.urgentProbeBound {
            return die("no answer from the server within \(settings.urgentProbeBound.secondsText) s (keepalive)")
        }
        if probeSentAt == nil && silence >= settings.keepalive.interval {
            requestProbe(now: now, urgent: false)
            try progressOpens()
        }
        return nil
    }

    /// Queues the health probes that are due (each at most once under way).
    private func runDueHealthChecks() throws {
        guard health != nil else { return }
        let now = clock()
        var queued = false
        for check in settings.healthChecks where healthDue[check.service].map({ $0 <= now }) ?? false {
            opener.enqueueHealth(check)
            healthDue[check.service] = now + Duration(seconds: check.interval)
            queued = true
        }
        if queued { try progressOpens() }
    }

    // MARK: Endings

    /// Idle means no client: keepalive probes keep the session alive, not in use.
    private func checkIdle() -> Ending? {
        guard connections.isEmpty && !opener.hasClients else {
            idleSince = nil
            return nil
        }
        if case .whenIdle = stopping { return .stopped }
        let now = clock()
        let since = idleSince ?? now
        idleSince = since
        if !settings.isPersistent && (now - since).seconds >= settings.linger {
            return .lingeredOut
        }
        return nil
    }

    /// The session failed: cut it, close its clients (after what already arrived), and keep
    /// the clients that had no channel yet for another session.
    private func die(_ reason: String) -> Ending {
        session.abandon()
        closeAll(.sshFailed(reason))
        return .died(reason)
    }

    /// Ends every connection: those with a channel get what already arrived first; those
    /// without one become orphans.
    private func closeAll(_ outcome: ConnectionOutcome) {
        for connection in connections where !connection.isClosed {
            _ = connection.flushToClient()
            connection.channel = nil
            connection.finish(connection.isFinished ? .ok : outcome, logger: logger)
        }
        connections.removeAll()
        closingChannels.removeAll()
        orphans.append(contentsOf: opener.takeAllClients().filter { !$0.isClosed })
    }

    // MARK: Copying

    private func pumpOne(_ connection: Connection, revents: Int16) throws {
        guard !connection.isClosed else { return }
        switch try pump.pump(connection, revents: revents, mayReadClient: session.pendingOutputCount < outputHighWater) {
        case .open:
            break
        case .finished:
            close(connection, .ok)
        case .clientFailed(let code):
            close(connection, .clientError(String(cString: strerror(code))))
        }
    }

    /// Ends one connection: its channel is closed in the background, its client now.
    private func close(_ connection: Connection, _ outcome: ConnectionOutcome) {
        if let channel = connection.channel {
            if !channel.free() { closingChannels.append(channel) }
            connection.channel = nil
        }
        connection.finish(outcome, logger: logger)
    }

    // MARK: Polling

    /// Whether no channel can take what the server sends now: every client is behind, and
    /// nothing waits to be written. Then the session socket is not read, so that the
    /// server's data waits in the kernel and in the channel windows, not in our memory.
    private var isSessionReadPaused: Bool {
        guard !connections.isEmpty, opener.current == nil, opener.queue.isEmpty else { return false }
        return connections.allSatisfy { ($0.serverEOF || !$0.toClient.isEmpty) && $0.toServer.isEmpty }
    }

    /// The descriptors to wait on: `wakeup`, the session socket, then each client (in
    /// `polledConnections` order). A client with nothing to wait for is left out (fd -1), so
    /// that a hang-up it reported already does not wake the loop again and again.
    func buildPollSet(wakeup: Int32) -> [pollfd] {
        var set: [pollfd] = []
        set.reserveCapacity(connections.count + 2)
        set.append(pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0))
        var sessionEvents = session.pollEvents
        if isSessionReadPaused { sessionEvents &= ~Int16(POLLIN) }
        set.append(pollfd(fd: session.socket, events: sessionEvents, revents: 0))
        let mayRead = session.pendingOutputCount < outputHighWater
        polledConnections.removeAll(keepingCapacity: true)
        for connection in connections {
            let wantsInput = mayRead && connection.toServer.isEmpty && !connection.clientEOF
            let wantsOutput = !connection.toClient.isEmpty
            if connection.isOneSocket {
                let events = (wantsInput ? Int16(POLLIN) : 0) | (wantsOutput ? Int16(POLLOUT) : 0)
                set.append(pollfd(fd: events == 0 ? -1 : connection.input, events: events, revents: 0))
                polledConnections.append(connection)
            } else {
                set.append(pollfd(fd: wantsInput ? connection.input : -1, events: Int16(POLLIN), revents: 0))
                set.append(pollfd(fd: wantsOutput ? connection.output : -1, events: Int16(POLLOUT), revents: 0))
                polledConnections.append(connection)
                polledConnections.append(connection)
            }
        }
        return set
    }

    /// When the loop must run next even if nothing happens: keepalive, probe bounds, open
    /// deadlines, the stuck-open bound while clients wait behind it, linger, stop deadline.
    var nextDeadline: ContinuousClock.Instant {
        var deadline = session.lastReceived + Duration(seconds: probeSentAt == nil ? settings.keepalive.interval : settings.silenceLimit)
        if let urgentSince, probeSentAt != nil {
            deadline = min(deadline, urgentSince + Duration(seconds: settings.urgentProbeBound))
        }
        if let openDeadline = opener.nextDeadline {
            deadline = min(deadline, openDeadline)
        }
        if let busySince, hasQueuedClients {
            deadline = min(deadline, busySince + SessionSettings.stuckOpenBound)
        }
        if let idleSince, !settings.isPersistent {
            deadline = min(deadline, idleSince + Duration(seconds: settings.linger))
        }
        if let due = healthDue.values.min() {
            deadline = min(deadline, due)
        }
        if case .whenIdle(let stopAt?) = stopping {
            deadline = min(deadline, stopAt)
        }
        return deadline
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? SSHError { return error.message }
        return "\(error)"
    }
}
