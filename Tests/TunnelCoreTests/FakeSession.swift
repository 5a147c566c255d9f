import Glibc
import SSHTransport
import TunnelConfig
@testable import TunnelCore

/// Time that moves only when a test says so.
final class ManualClock {
    var now = ContinuousClock.now

    func advance(_ seconds: Double) {
        now = now + Duration(seconds: seconds)
    }
}

/// A scripted SSH session: each channel open is answered as the test says, channels hold
/// what the "server" sent and take what the client wrote, as far as the test allows.
final class FakeSession: TunnelSession {
    /// How the server answers one channel open.
    enum OpenAnswer {
        /// Opens after this many calls (0: at once).
        case open(afterCalls: Int)
        case refuse(String)
        /// Never answers; calls keep saying "would block".
        case never
        /// libssh2 stops waiting (its 60 s limit).
        case giveUp
        /// The session fails during this open (the server went away).
        case sessionFails(String)
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let socket: Int32
    private let peerSocket: Int32
    let clock: ManualClock
    var lastReceived: ContinuousClock.Instant
    /// Moves whenever the "server" sends something (a channel's data, EOF or window room).
    var receivedCount = 0
    var isPeerClosed = false
    var pendingOutputCount = 0
    var pollEvents: Int16 { Int16(POLLIN) }

    /// Answers for the next opens, in order; when empty, opens succeed at once.
    var answers: [OpenAnswer] = []
    /// What the next channel opened has already received (a server that speaks first).
    var nextChannelInbound: [UInt8] = []
    /// Whether that data sits in libssh2's transport buffer, where neither poll nor
    /// `hasBufferedInput` sees it: only a read of the channel takes it in.
    var nextChannelHidesInput = false
    private var callsOnCurrent = 0
    /// Every channel handed out, in order.
    private(set) var channels: [FakeChannel] = []
    private(set) var openedTargets: [Endpoint] = []
    private(set) var probes = 0
    private(set) var keepalives = 0
    /// For each time the loop asked to acknowledge reads: what the channels had taken from
    /// clients by then (the loop asks once per pass, after serving them).
    private(set) var acknowledgements: [Int] = []
    /// Thrown by every call once set: the session failed.
    var failure: Failure?
    private(set) var isAbandoned = false

    init(clock: ManualClock) {
        var ends: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends)
        socket = ends[0]
        peerSocket = ends[1]
        self.clock = clock
        lastReceived = clock.now
    }

    deinit {
        close(socket)
        close(peerSocket)
    }

    /// The server "sends" something: the session saw bytes now.
    func receive() {
        lastReceived = clock.now
        receivedCount += 1
    }

    func flush() throws {
        if let failure { throw failure }
    }

    /// Data the "server" sent that is still in the session socket: libssh2 takes it in only
    /// when a call reads the socket (a channel read, or filing the arrived packets).
    private var inSocket: [(channel: FakeChannel, bytes: [UInt8])] = []

    /// The server sends `bytes` for `channel`; they wait in the socket until read.
    func sendThroughSocket(_ bytes: [UInt8], to channel: FakeChannel) {
        var byte: UInt8 = 1
        _ = Glibc.write(peerSocket, &byte, 1)
        inSocket.append((channel, bytes))
    }

    /// Reads the socket, as any libssh2 call that reads does: what waited there is filed.
    func readSocket() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while recv(socket, &buffer, buffer.count, Int32(MSG_DONTWAIT)) > 0 {}
        for (channel, bytes) in inSocket { channel.inbound += bytes }
        inSocket.removeAll()
    }

    func openChannel(to target: Endpoint, from originator: Endpoint, window: UInt32) throws -> (any TunnelChannel)? {
        if let failure { throw failure }
        let answer = answers.first ?? .open(afterCalls: 0)
        callsOnCurrent += 1
        switch answer {
        case .never:
            return nil
        case .open(let calls):
            guard callsOnCurrent > calls else { return nil }
            finishAnswer()
            receive()
            let channel = FakeChannel(session: self)
            channel.inbound = nextChannelInbound
            channel.hidesBufferedInput = nextChannelHidesInput
            channels.append(channel)
            openedTargets.append(target)
            return channel
        case .refuse(let reason):
            finishAnswer()
            receive()
            throw ChannelOpenFailure.refused(reason: reason)
        case .giveUp:
            finishAnswer()
            throw ChannelOpenFailure.unanswered
        case .sessionFails(let reason):
            finishAnswer()
            failure = Failure(description: reason)
            throw failure!
        }
    }

    /// The open under way is answered now (for `.never` turned late).
    func answerStuckOpen() {
        if case .never = answers.first { answers[0] = .open(afterCalls: 0) }
    }

    private func finishAnswer() {
        if !answers.isEmpty { answers.removeFirst() }
        callsOnCurrent = 0
    }

    /// Whether the server answers probes.
    var answersProbes = true
    private var isProbePending = false

    func probe() throws -> Void? {
        if let failure { throw failure }
        if !isProbePending { probes += 1 }
        guard answersProbes else {
            isProbePending = true
            return nil
        }
        isProbePending = false
        receive()
        return ()
    }

    func sendKeepalive() throws {
        if let failure { throw failure }
        keepalives += 1
    }

    func acknowledgeReads() throws {
        if let failure { throw failure }
        acknowledgements.append(channels.map(\.written.count).reduce(0, +))
    }

    func abandon() {
        isAbandoned = true
    }

    func disconnect(reason: String) {}
}

/// A scripted channel: `inbound` is what the server sent, `eofFromServer` its EOF;
/// `written` is what the client's bytes became, `writeLimit` how much one write takes.
final class FakeChannel: TunnelChannel {
    unowned let session: FakeSession
    var inbound: [UInt8] = [] { didSet { session.receivedCount += 1 } }
    var eofFromServer = false { didSet { session.receivedCount += 1 } }
    var written: [UInt8] = []
    /// Most bytes one write takes; 0 means the window is closed.
    var writeLimit = Int.max { didSet { session.receivedCount += 1 } }
    /// How many times the loop asked whether data waits (`hasBufferedInput`).
    private(set) var bufferQuestions = 0
    /// Reads say "would block" this many more times before giving data.
    var readStalls = 0
    private(set) var eofSent = false
    private(set) var freeCalls = 0
    var isFreed: Bool { freeCalls > 0 }
    /// Thrown by the next read, for "the session failed under this channel".
    var readFailure: FakeSession.Failure? { didSet { session.receivedCount += 1 } }

    init(session: FakeSession) {
        self.session = session
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> SSHChannel.ReadResult {
        session.readSocket()
        if let readFailure { throw readFailure }
        if let failure = session.failure { throw failure }
        if readStalls > 0 {
            readStalls -= 1
            return .wouldBlock
        }
        if inbound.isEmpty { return eofFromServer ? .endOfFile : .wouldBlock }
        let count = min(buffer.count, inbound.count)
        buffer.copyBytes(from: inbound[0..<count])
        inbound.removeFirst(count)
        return .bytes(count)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws -> Int? {
        if let failure = session.failure { throw failure }
        let count = min(bytes.count, writeLimit)
        guard count > 0 else { return nil }
        written.append(contentsOf: bytes[0..<count])
        return count
    }

    func sendEOF() throws -> Void? {
        if let failure = session.failure { throw failure }
        eofSent = true
        return ()
    }

    func free() -> Bool {
        freeCalls += 1
        return true
    }

    /// The data is in libssh2's raw transport buffer, not yet in its packet list.
    var hidesBufferedInput = false
    var hasBufferedInput: Bool {
        bufferQuestions += 1
        return readFailure != nil || (!hidesBufferedInput && (!inbound.isEmpty || eofFromServer))
    }
    func fileArrivedPackets() throws { session.readSocket() }
    var canWrite: Bool { writeLimit > 0 }
}
