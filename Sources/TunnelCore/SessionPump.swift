import Glibc
import Logging
import SSHTransport
import TunnelConfig

/// The event loop of one connected SSH session: opens channels for new clients one at a
/// time, copies bytes both ways for every channel, probes the server when it is quiet, and
/// returns when the session lingered out, was told to stop, or died.
final class SessionPump {
    /// Whether the session should end once its connections are done.
    enum Stopping {
        /// Keep going: linger, or stay up if persistent.
        case no
        /// End as soon as no connection is left; at `deadline`, if any, close the rest.
        case whenIdle(deadline: ContinuousClock.Instant?)
    }

    /// Why `run` returned.
    enum Ending {
        case lingeredOut
        case stopped
        case died(String)
    }

    /// A queued channel open: a client's, or a keepalive probe.
    private enum PendingOpen {
        case client(Connection)
        case probe
    }

    private let session: SSHSession
    private let settings: SessionSettings
    private let wakeup: Wakeup
    private let logger: Logger

    private var connections: [Connection] = []
    private var openQueue: [PendingOpen] = []
    private var opening: (open: PendingOpen, startedAt: ContinuousClock.Instant, timeout: Double, abandoned: Bool)?
    private var probeQueued = false
    private var closingChannels: [SSHChannel] = []
    /// The connection of each client entry of the last poll set, in its order (a connection
    /// with separate input and output descriptors has two entries).
    private var polledConnections: [Connection] = []
    private var idleSince: ContinuousClock.Instant? = .now
    private var stopping = Stopping.no
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// Stop reading clients while the session's unsent output is above this.
    private let outputHighWater = 4 << 20

    init(session: SSHSession, settings: SessionSettings, wakeup: Wakeup, logger: Logger) {
        self.session = session
        self.settings = settings
        self.wakeup = wakeup
        self.logger = logger
    }

    deinit {
        scratch.deallocate()
    }

    /// Clients that had no channel yet when the session ended; the caller moves them on.
    private(set) var orphans: [Connection] = []

    /// Pumps until the session ends.
    /// - `takeNewClients` hands over clients queued for this session.
    /// - `stopping` says whether the session should end when idle (reload, shutdown).
    /// - `retireIfIdle` is asked once the linger time has passed with no client; `true` ends the loop.
    func run(takeNewClients: () -> [Connection], stopping: () -> Stopping, retireIfIdle: () -> Bool) -> Ending {
        var pollSet: [pollfd] = []
        while true {
            for client in takeNewClients() { openQueue.append(.client(client)) }
            self.stopping = stopping()
            if case .whenIdle(let deadline?) = self.stopping, deadline <= .now {
                closeAll(.shutdown)
                return .stopped
            }

            let ending: Ending?
            do {
                ending = try step(pollSet: pollSet, retireIfIdle: retireIfIdle)
            } catch {
                ending = .died(Self.describe(error))
            }
            if let ending {
                if case .died(let reason) = ending {
                    session.abandon()
                    closeAll(.sshFailed(reason))
                }
                return ending
            }

            pollSet = buildPollSet()
            _ = poll(&pollSet, nfds_t(pollSet.count), nextTimeout())
            if pollSet[0].revents != 0 { wakeup.drain() }
        }
    }

    /// One pass over everything that may have progressed. Returns an ending, or nil to go on.
    private func step(pollSet: [pollfd], retireIfIdle: () -> Bool) throws -> Ending? {
        let now = ContinuousClock.now
        let sessionEvents = pollSet.count > 1 ? pollSet[1].revents : 0
        if sessionEvents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
            return .died("the connection to the server was lost")
        }
        try session.flush()
        if session.isPeerClosed { return .died("the server closed the connection") }

        try progressOpen(now: now)
        var clientEvents: [ObjectIdentifier: Int16] = [:]
        for (index, connection) in polledConnections.enumerated() where pollSet[index + 2].revents != 0 {
            clientEvents[ObjectIdentifier(connection), default: 0] |= pollSet[index + 2].revents
        }
        for connection in connections {
            try pump(connection, revents: clientEvents[ObjectIdentifier(connection)] ?? 0)
        }
        closingChannels.removeAll { $0.free() }
        try settle(now: now)
        connections.removeAll { $0.channel == nil }
        if sessionEvents & Int16(POLLIN) != 0 && connections.isEmpty && opening == nil && !probeQueued {
            // The server spoke while no channel was there to read it: a probe takes it in.
            openQueue.append(.probe)
            probeQueued = true
            try progressOpen(now: now)
        }
        try session.flush()

        let silence = (now - session.lastReceived).seconds
        if silence > settings.silenceLimit {
            return .died("no answer from the server for \(Int(silence)) s (keepalive)")
        }
        if silence > settings.keepalive.interval && !probeQueued {
            openQueue.append(.probe)
            probeQueued = true
            try progressOpen(now: now)
        }

        // Idle means no client: keepalive probes keep the session alive, not in use.
        if connections.isEmpty && !hasClientOpens {
            if case .whenIdle = stopping { return .stopped }
            let since = idleSince ?? now
            idleSince = since
            if !settings.isPersistent && (now - since).seconds >= settings.linger && retireIfIdle() {
                return .lingeredOut
            }
        } else {
            idleSince = nil
        }
        return nil
    }

    /// Every libssh2 call may read the session socket and keep what it read for others: data
    /// and EOFs for channels pumped earlier in this pass, window room, the answer to the open
    /// under way. The socket then no longer says so, so finish that work now, until a pass
    /// finds none (bounded, so one busy channel cannot hold the loop).
    private func settle(now: ContinuousClock.Instant) throws {
        for _ in 0..<16 {
            var moved = false
            if opening != nil {
                let before = connections.count
                try progressOpen(now: now)
                moved = connections.count != before || opening == nil
            }
            for connection in connections {
                guard let channel = connection.channel else { continue }
                let canRead = connection.toClient.isEmpty && !connection.serverEOF && channel.hasBufferedInput
                let canWrite = !connection.toServer.isEmpty && channel.canWrite
                if canRead || canWrite {
                    try pump(connection, revents: 0)
                    moved = true
                }
            }
            if !moved { return }
        }
    }

    /// Whether a client's channel open is under way or queued (probes do not count).
    private var hasClientOpens: Bool {
        if let current = opening, !current.abandoned, case .client = current.open { return true }
        return openQueue.contains { open in
            if case .client = open { return true }
            return false
        }
    }

    /// Whether no channel can take what the server sends now: every client is behind, and
    /// nothing waits to be written. Then the session socket is not read, so that the
    /// server's data waits in the kernel and in the channel windows, not in our memory.
    private var isSessionReadPaused: Bool {
        guard !connections.isEmpty, opening == nil, openQueue.isEmpty else { return false }
        return connections.allSatisfy { ($0.serverEOF || !$0.toClient.isEmpty) && $0.toServer.isEmpty }
    }

    // MARK: Channel opens

    /// Advances the channel open under way, or starts the next queued one.
    private func progressOpen(now: ContinuousClock.Instant) throws {
        while true {
            if opening == nil {
                guard !openQueue.isEmpty else { return }
                let next = openQueue.removeFirst()
                let timeout: Double
                if case .probe = next {
                    timeout = settings.keepalive.interval * Double(settings.keepalive.count)
                } else {
                    timeout = settings.openTimeout(sessionWasIdle: (now - session.lastReceived).seconds > settings.keepalive.interval)
                }
                // Started now, not at the start of the pass: bytes taken in earlier in this pass
                // must not count as an answer to this open.
                opening = (next, .now, timeout, false)
            }
            guard let current = opening else { return }
            switch current.open {
            case .probe:
                guard try session.probe() != nil else { return try checkOpenDeadline(now: now) }
                probeQueued = false
            case .client(let connection):
                let channel: SSHChannel?
                do {
                    channel = try session.openDirectTCPIP(
                        host: connection.service.target.host, port: connection.service.target.port,
                        originatorHost: connection.peer.host, originatorPort: connection.peer.port,
                        window: 2 << 20)
                } catch let error as SSHError where SSHSession.isChannelRefusal(error) {
                    opening = nil
                    if !current.abandoned { connection.finish(.refused(error.message), logger: logger) }
                    continue
                }
                guard let channel else { return try checkOpenDeadline(now: now) }
                if current.abandoned {
                    closingChannels.append(channel)
                } else {
                    connection.channel = channel
                    connections.append(connection)
                }
            }
            opening = nil
        }
    }

    /// Gives up on a channel open the server has not answered in time. If the server said
    /// nothing at all meanwhile, the session is dead. Otherwise only this client is given up;
    /// the open stays under way (libssh2 cannot cancel it) and is timed again, so that a
    /// server that goes quiet later is still found dead.
    private func checkOpenDeadline(now: ContinuousClock.Instant) throws {
        guard let current = opening, let deadline = openDeadline, now > deadline else { return }
        if session.lastReceived < current.startedAt {
            if case .probe = current.open {
                let silence = Int((now - session.lastReceived).seconds)
                throw SSHError(code: -9, message: "no answer from the server for \(silence) s (keepalive)", function: "keepalive")
            }
            throw SSHError(code: -9, message: "the server did not answer a channel open within \(Self.format(current.timeout)) s", function: "libssh2_channel_open_ex")
        }
        if !current.abandoned, case .client(let connection) = current.open {
            connection.finish(.sshFailed("the server did not answer the channel open within \(Self.format(current.timeout)) s"), logger: logger)
        }
        opening = (current.open, .now, current.timeout, true)
    }

    /// When the open under way is given up. A keepalive probe normally waits interval x count,
    /// but not while a client waits behind it: after a laptop sleeps, the first client must
    /// not wait out a dead session's keepalive, so the probe then gets the short bound of an
    /// open on an idle session, counted from when the client came.
    private var openDeadline: ContinuousClock.Instant? {
        guard let current = opening else { return nil }
        var deadline = current.startedAt + Duration(seconds: current.timeout)
        if case .probe = current.open, let waiting = openQueue.lazy.compactMap({ open -> Connection? in
            if case .client(let connection) = open { return connection }
            return nil
        }).first {
            let since = max(current.startedAt, waiting.acceptedAt)
            deadline = min(deadline, since + Duration(seconds: settings.openTimeout(sessionWasIdle: true)))
        }
        return deadline
    }

    // MARK: Copying

    /// Moves bytes both ways for one connection.
    private func pump(_ connection: Connection, revents: Int16) throws {
        guard let channel = connection.channel else { return }
        do {
            // Server to client.
            if !connection.toClient.isEmpty, revents & Int16(POLLOUT | POLLERR | POLLHUP) != 0 {
                if let error = connection.flushToClient() { throw ClientFailure(code: error) }
            }
            while connection.toClient.isEmpty && !connection.serverEOF {
                switch try channel.read(into: scratch) {
                case .wouldBlock:
                    break
                case .endOfFile:
                    connection.serverEOF = true
                    continue
                case .bytes(let count):
                    connection.bytesDown += count
                    try deliverToClient(connection, UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
                    continue
                }
                break
            }
            if connection.serverEOF && connection.toClient.isEmpty && !connection.clientShutDown {
                connection.client.shutdownOutput()
                connection.clientShutDown = true
            }

            // Client to server.
            try connection.toServer.drainIntoChannel(channel.write)
            if connection.toServer.isEmpty && !connection.clientEOF
                && revents & Int16(POLLIN | POLLHUP | POLLERR) != 0
                && session.pendingOutputCount < outputHighWater {
                try readClient(connection, into: channel)
            }
            if connection.clientEOF && connection.toServer.isEmpty && !connection.channelEOFSent {
                if try channel.sendEOF() != nil { connection.channelEOFSent = true }
            }
        } catch let failure as ClientFailure {
            close(connection, .clientError(failure.description))
            return
        }
        if connection.isFinished {
            close(connection, .ok)
        }
    }

    /// Reads what the client sent (one scratch buffer's worth) and offers it to the channel.
    private func readClient(_ connection: Connection, into channel: SSHChannel) throws {
        let count = read(connection.client.input, scratch.baseAddress, scratch.count)
        if count == 0 {
            connection.clientEOF = true
            return
        }
        if count < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            throw ClientFailure(code: errno)
        }
        connection.bytesUp += count
        var offset = 0
        while offset < count {
            guard let taken = try channel.write(UnsafeRawBufferPointer(rebasing: scratch[offset..<count])) else { break }
            offset += taken
        }
        if offset < count {
            connection.toServer.store(UnsafeRawBufferPointer(rebasing: scratch[offset..<count]))
        }
    }

    private func deliverToClient(_ connection: Connection, _ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let written = write(connection.client.output, bytes.baseAddress! + offset, bytes.count - offset)
            if written >= 0 {
                offset += written
                continue
            }
            if errno == EINTR { continue }
            if errno == EAGAIN { break }
            throw ClientFailure(code: errno)
        }
        if offset < bytes.count {
            connection.toClient.store(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
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

    /// Ends every connection: those with a channel get what already arrived first.
    private func closeAll(_ outcome: ConnectionOutcome) {
        for connection in connections {
            _ = connection.flushToClient()
            connection.channel = nil
            connection.finish(connection.isFinished ? .ok : outcome, logger: logger)
        }
        connections.removeAll()
        closingChannels.removeAll()
        if let current = opening, !current.abandoned, case .client(let connection) = current.open {
            orphans.append(connection)
        }
        opening = nil
        for case .client(let connection) in openQueue { orphans.append(connection) }
        openQueue.removeAll()
    }

    // MARK: Polling

    /// The descriptors to wait on: the wake-up pipe, the session socket, then each client
    /// (in `polledConnections` order). A client with nothing to wait for is left out (fd -1),
    /// so that a hang-up it reported already does not wake the loop again and again.
    private func buildPollSet() -> [pollfd] {
        var set: [pollfd] = []
        set.reserveCapacity(connections.count + 2)
        set.append(pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0))
        var sessionEvents = session.pollEvents
        if isSessionReadPaused { sessionEvents &= ~Int16(POLLIN) }
        set.append(pollfd(fd: session.socket, events: sessionEvents, revents: 0))
        let mayRead = session.pendingOutputCount < outputHighWater
        polledConnections.removeAll(keepingCapacity: true)
        for connection in connections {
            let wantsInput = mayRead && connection.toServer.isEmpty && !connection.clientEOF
            let wantsOutput = !connection.toClient.isEmpty
            let client = connection.client
            if client.input == client.output {
                let events = (wantsInput ? Int16(POLLIN) : 0) | (wantsOutput ? Int16(POLLOUT) : 0)
                set.append(pollfd(fd: events == 0 ? -1 : client.input, events: events, revents: 0))
                polledConnections.append(connection)
            } else {
                set.append(pollfd(fd: wantsInput ? client.input : -1, events: Int16(POLLIN), revents: 0))
                set.append(pollfd(fd: wantsOutput ? client.output : -1, events: Int16(POLLOUT), revents: 0))
                polledConnections.append(connection)
                polledConnections.append(connection)
            }
        }
        return set
    }

    /// Milliseconds until the next timer: keepalive, open deadline, or linger.
    private func nextTimeout() -> Int32 {
        let now = ContinuousClock.now
        var deadline = session.lastReceived + Duration(seconds: probeQueued ? settings.silenceLimit : settings.keepalive.interval)
        if let openDeadline {
            deadline = min(deadline, openDeadline)
        }
        if let idleSince, !settings.isPersistent {
            deadline = min(deadline, idleSince + Duration(seconds: settings.linger))
        }
        if case .whenIdle(let stopAt?) = stopping {
            deadline = min(deadline, stopAt)
        }
        if deadline <= now { return 0 }
        return Socket.milliseconds(until: deadline + .milliseconds(5))
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? SSHError { return error.message }
        return "\(error)"
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }
}

/// A client socket failed; only that connection ends.
private struct ClientFailure: Error, CustomStringConvertible {
    var code: Int32
    var description: String { String(cString: strerror(code)) }
}
