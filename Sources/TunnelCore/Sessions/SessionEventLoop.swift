import Glibc
import Logging
import Platform
import SSHTransport
import TunnelConfig

/// The event loop of one connected SSH session: one pass (`step`) opens channels for new
/// clients, copies bytes both ways for every channel, probes the server when it is quiet,
/// and says when the session lingered out, was told to stop, or died.
///
/// It owns the session, its channels and its clients; it is driven by one thread (its
/// supervisor), which hands it clients (`add`) and commands (`stopping`, `markSuspect`),
/// sleeps in `wait` and reads its state (`load`, `busySince`). It reports what happened as a
/// value (`Ending`) and never calls up.
///
/// A pass costs what is ready, not what is owned: clients are waited on in epoll sets
/// (`SessionReadiness`) whose interest changes only when a client's changes, and only the
/// clients epoll reports are pumped. The channel side is the one exception, and the reason is
/// libssh2's: every packet that arrives is filed in one list for the whole session, and the
/// only way to learn whether a channel has data or an EOF is to ask that channel. So after a
/// pass in which the session socket brought bytes (and only then), every channel that could
/// take data is asked, at the cost of a walk of libssh2's list of unread packets, which this
/// loop keeps short by reading what it finds at once. An idle session's channels are asked
/// nothing; a session receiving bytes pays one cheap question per channel per batch of
/// packets, not a system call per channel as a read would be.
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
    private let readiness: SessionReadiness
    /// The connections with a channel, by slot (a slot's number is its epoll token).
    private var slots: [Slot?] = []
    private var freeSlots: [Int] = []
    /// How many slots are taken.
    private var liveCount = 0
    /// How many connections can take what the server sends, or have bytes for it.
    private var takersOfServerData = 0
    /// Slots whose descriptors epoll cannot wait on: served in every pass.
    private var alwaysReady: Set<Int> = []
    private var closingChannels: [any TunnelChannel] = []
    /// What the last `wait` found ready.
    private var found = SessionReadiness.Found()
    /// The session's received-byte count when its channels were last asked for input.
    private var askedAtReceived = -1
    /// The session's received-byte count when libssh2 last filed everything it had read.
    private var filedAtReceived = -1
    /// Channels were left with work when the last pass's bound was reached.
    private var isChannelWorkLeft = false
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

    /// One connection with a channel, with what the epoll sets hold for it.
    private final class Slot {
        let connection: Connection
        let index: Int
        var registration = SessionReadiness.ClientRegistration()
        /// Counted in `takersOfServerData`.
        var takesServerData = false

        init(_ connection: Connection, index: Int) {
            self.connection = connection
            self.index = index
        }
    }

    /// - `readiness`: the epoll sets to wait in (made by the supervisor, which can fail).
    /// - `health`: where the settings' health probes report; nil for a session that does not probe.
    init(session: any TunnelSession, readiness: SessionReadiness, settings: SessionSettings, logger: Logger, health: HealthBoard? = nil,
         clock: @escaping () -> ContinuousClock.Instant = { .now }) {
        self.session = session
        self.readiness = readiness
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
    var load: Int { liveCount + opener.clientCount }

    /// Clients waiting for a channel (the one under way included).
    var waitingForChannel: Int { opener.clientCount }

    /// How long the server has recently taken to answer an open, in seconds, once known.
    var openAnswerSeconds: Double? { opener.answerSeconds }

    /// Opens the server answered so far.
    var opensAnswered: Int { opener.answered }

    /// Since when the channel open under way has waited, if one is.
    var busySince: ContinuousClock.Instant? { opener.busySince }

    /// Where the open under way goes, and since when, if one is (probes excluded).
    var openUnderWay: (target: Endpoint, since: ContinuousClock.Instant)? { opener.openUnderWay }

    /// Whether clients wait behind the open under way.
    var hasQueuedClients: Bool { opener.queuedClientCount > 0 }

    /// The clients waiting behind the open under way, taken out to go to a sibling session;
    /// those for `keeping` (the stuck open's own target) stay.
    func takeQueuedClients(keeping: Endpoint? = nil) -> [Connection] {
        opener.takeQueuedClients(keeping: keeping)
    }

    // MARK: One pass

    /// One pass over what may have progressed since the last `wait`. Returns an ending, or
    /// nil to go on.
    func step() -> Ending? {
        if case .whenIdle(let deadline?) = stopping, deadline <= clock() {
            closeAll(.shutdown)
            return .stopped
        }
        if let reason = pendingDeath { return die(reason) }
        let sessionEvents = found.session
        do {
            if sessionEvents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                return die("the connection to the server was lost")
            }
            try session.flush()
            if session.isPeerClosed { return die("the server closed the connection") }
            if sessionEvents & Int16(POLLIN) != 0 {
                // Bytes wait in the socket: libssh2 reads them only when asked.
                try fileArrivedPackets()
            }

            try progressOpens()
            for (index, events) in found.clients {
                if let slot = slots[index] { try serve(slot, revents: events) }
            }
            for index in alwaysReady {
                if let slot = slots[index] { try serve(slot, revents: Int16(POLLIN | POLLOUT)) }
            }
            closingChannels.removeAll { $0.free() }
            try serveChannels()
            if sessionEvents & Int16(POLLIN) != 0 && liveCount == 0 && opener.current == nil && !opener.hasProbe {
                // The server spoke while no channel was there to read it: a probe takes it in.
                opener.enqueueProbe()
                try progressOpens()
            }
            if let ending = try checkLiveness() { return ending }
            try runDueHealthChecks()
            // The probes above may have read data for channels, or opened one: deliver it now.
            try serveChannels()
            try session.acknowledgeReads()
            try session.flush()
        } catch {
            return die(Self.describe(error))
        }
        return checkIdle()
    }

    /// Every libssh2 call may read the session socket and keep what it read for others: data
    /// and EOFs for channels pumped earlier in this pass, window room, the answer to the open
    /// under way. The socket then no longer says so, so finish that work now, until a round
    /// finds none (bounded, so one busy channel cannot hold the loop; what is left makes the
    /// next wait return at once). Channels are asked only when the session received bytes
    /// since they were last asked: nothing else changes what libssh2 holds for them.
    private func serveChannels() throws {
        isChannelWorkLeft = false
        var isReadLeft = false
        for _ in 0..<16 {
            var moved = false
            if opener.current != nil {
                let before = liveCount
                let wasBusySince = opener.busySince
                try progressOpens()
                moved = liveCount != before || opener.busySince != wasBusySince
            }
            if session.receivedCount != askedAtReceived {
                // An open's answer, a probe's or a close's is read packet by packet, and
                // what came after it may still be unparsed in libssh2's buffer: file it all,
                // unless nothing was read since it last was.
                if session.receivedCount != filedAtReceived { try fileArrivedPackets() }
                askedAtReceived = session.receivedCount
                isReadLeft = false
                for case let slot? in slots {
                    let connection = slot.connection
                    guard let channel = connection.channel, !connection.isClosed else { continue }
                    let canRead = connection.toClient.isEmpty && !connection.serverEOF && channel.hasBufferedInput
                    let owesServer = !connection.toServer.isEmpty || (connection.clientEOF && !connection.channelEOFSent)
                    guard canRead || (owesServer && channel.canWrite) else { continue }
                    try serve(slot, revents: 0)
                    moved = true
                    // A read that would block with data waiting is asked again next pass.
                    if canRead, let channel = connection.channel, connection.toClient.isEmpty, !connection.serverEOF, channel.hasBufferedInput {
                        isReadLeft = true
                    }
                }
            }
            if !moved { break }
        }
        if isReadLeft || session.receivedCount != askedAtReceived {
            isChannelWorkLeft = true
            askedAtReceived = -1
        }
    }

    // MARK: Channel opens

    private func progressOpens() throws {
        var opened: [Slot] = []
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
                opened.append(admit(connection))
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
        for slot in opened { try serve(slot, revents: 0) }
    }

    // MARK: Liveness

    /// Sends a probe unless one is out. A channel-open probe when no open is under way (its
    /// answer is consumed); else a global request, since the open slot is taken.
    private func requestProbe(now: ContinuousClock.Instant, urgent: Bool) {
        if urgent && urgentSince == nil { urgentSince = now }
        guard probeSentAt == nil else { return }
        probeSentAt = now
        if opener.current == nil && !opener.hasQueue {
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
        guard liveCount == 0 && !opener.hasClients else {
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
        for case let slot? in slots {
            let connection = slot.connection
            _ = connection.flushToClient()
            connection.channel = nil
            release(slot)
            connection.finish(connection.isFinished ? .ok : outcome, logger: logger)
        }
        closingChannels.removeAll()
        orphans.append(contentsOf: opener.takeAllClients().filter { !$0.isClosed })
    }

    // MARK: Connections

    /// Has libssh2 read the socket and file every packet, through any live channel.
    private func fileArrivedPackets() throws {
        guard let channel = anyChannel else { return }
        try channel.fileArrivedPackets()
        filedAtReceived = session.receivedCount
    }

    /// A channel of a live connection, if any.
    private var anyChannel: (any TunnelChannel)? {
        for case let slot? in slots {
            if let channel = slot.connection.channel { return channel }
        }
        return nil
    }

    /// Gives a connection whose channel opened a slot, and waits on its client from now on.
    private func admit(_ connection: Connection) -> Slot {
        let index = freeSlots.popLast() ?? slots.count
        let slot = Slot(connection, index: index)
        if index == slots.count { slots.append(slot) } else { slots[index] = slot }
        liveCount += 1
        refresh(slot)
        return slot
    }

    /// Stops waiting on a connection's client and frees its slot (before its descriptors close).
    private func release(_ slot: Slot) {
        guard slots[slot.index] === slot else { return }
        let connection = slot.connection
        readiness.forgetClient(input: connection.input, output: connection.output, registration: &slot.registration)
        if slot.takesServerData { takersOfServerData -= 1 }
        alwaysReady.remove(slot.index)
        slots[slot.index] = nil
        freeSlots.append(slot.index)
        liveCount -= 1
    }

    /// After a connection moved: what its client is waited on for, and whether it can take
    /// the server's data, change only if they changed.
    private func refresh(_ slot: Slot) {
        let connection = slot.connection
        readiness.watchClient(slot.index, input: connection.input, wantsInput: connection.toServer.isEmpty && !connection.clientEOF,
                              output: connection.output, wantsOutput: !connection.toClient.isEmpty, registration: &slot.registration)
        if slot.registration.isAlwaysReady { alwaysReady.insert(slot.index) }
        let takes = !((connection.serverEOF || !connection.toClient.isEmpty) && connection.toServer.isEmpty)
        if takes != slot.takesServerData {
            slot.takesServerData = takes
            takersOfServerData += takes ? 1 : -1
        }
    }

    // MARK: Copying

    private func serve(_ slot: Slot, revents: Int16) throws {
        let connection = slot.connection
        guard !connection.isClosed else { return }
        let result: ChannelPump.Result
        do {
            result = try pump.pump(connection, revents: revents, mayReadClient: session.pendingOutputCount < outputHighWater)
        } catch {
            refresh(slot)
            throw error
        }
        switch result {
        case .open:
            refresh(slot)
        case .finished:
            close(slot, .ok)
        case .clientFailed(let code):
            close(slot, .clientError(String(cString: strerror(code))))
        }
    }

    /// Ends one connection: its channel is closed in the background, its client now.
    private func close(_ slot: Slot, _ outcome: ConnectionOutcome) {
        let connection = slot.connection
        if let channel = connection.channel {
            if !channel.free() { closingChannels.append(channel) }
            connection.channel = nil
        }
        release(slot)
        connection.finish(outcome, logger: logger)
    }

    // MARK: Waiting

    /// Whether no channel can take what the server sends now: every client is behind, and
    /// nothing waits to be written. Then the session socket is not read, so that the
    /// server's data waits in the kernel and in the channel windows, not in our memory.
    private var isSessionReadPaused: Bool {
        liveCount > 0 && takersOfServerData == 0 && opener.current == nil && !opener.hasQueue
    }

    /// Sleeps until the session, a client or the wake-up pipe is ready, or the loop's next
    /// deadline (`bound` caps the sleep, for the watchdog); remembers what was ready for the
    /// next `step`. Returns whether the wake-up pipe was signalled.
    func wait(bound: (Int32) -> Int32 = { $0 }) -> Bool {
        var sessionEvents = session.pollEvents
        if isSessionReadPaused { sessionEvents &= ~Int16(POLLIN) }
        readiness.watchSession(session.socket, events: sessionEvents)
        readiness.readClients(session.pendingOutputCount < outputHighWater)
        let deadline = nextDeadline
        let busy = isChannelWorkLeft || !alwaysReady.isEmpty || deadline <= .now
        let timeout = busy ? 0 : Socket.milliseconds(until: deadline + .milliseconds(2))
        found = readiness.wait(timeout: bound(timeout))
        return found.isWoken
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
