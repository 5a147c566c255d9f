import Foundation
import Glibc
import Logging
import SSHTransport
import TunnelConfig
import XCTest
@testable import TunnelCore

/// The session event loop driven pass by pass against a scripted session, with time that
/// moves only when the test says so (issue 10).
final class SessionEventLoopTests: XCTestCase {
    private var clock: ManualClock!
    private var session: FakeSession!
    private var log: CapturedLog!
    private var loop: SessionEventLoop!
    /// The test's ends of the clients' socket pairs, by connection.
    private var peers: [ObjectIdentifier: Int32] = [:]

    override func setUp() {
        clock = ManualClock()
        session = FakeSession(clock: clock)
        log = CapturedLog()
        let service = Self.service(connectTimeout: 5)
        loop = SessionEventLoop(session: session, readiness: try! SessionReadiness(wakeup: -1), settings: SessionSettings(key: service.sessionKey, services: [service]), logger: log.logger, clock: { [clock] in clock!.now })
    }

    override func tearDown() {
        loop = nil
        peers.values.forEach { close($0) }
        peers = [:]
    }

    static func service(connectTimeout: Double, name: String = "svc") -> Service {
        Service(
            name: name, location: SourceLocation(file: "test.conf", line: 1),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 7777)),
            route: Route(server: Endpoint(host: "bastion", port: 22), user: "kiosk"),
            forwarding: Forwarding(target: Endpoint(host: "carbon", port: 6001)),
            policy: SessionPolicy(linger: 300, keepalive: Keepalive(interval: 15, count: 3), connectTimeout: connectTimeout))
    }

    /// A client connected through a socket pair; the test holds the other end.
    private func client() -> Connection {
        var ends: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends)
        Socket.setNonBlocking(ends[0])
        let connection = Connection(client: ClientEnd(socket: ends[0]), peer: Endpoint(host: "127.0.0.1", port: 40000), service: Self.service(connectTimeout: 3), stats: ServiceStats())
        peers[ObjectIdentifier(connection)] = ends[1]
        return connection
    }

    private func peer(_ connection: Connection) -> Int32 { peers[ObjectIdentifier(connection)]! }

    /// One pass, after collecting what the clients' sockets are ready for, without sleeping.
    @discardableResult
    private func pass() -> SessionEventLoop.Ending? {
        _ = loop.wait(bound: { _ in 0 })
        return loop.step()
    }

    private func readAvailable(_ fd: Int32) -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if count <= 0 { return result }
            result.append(contentsOf: buffer[0..<count])
        }
    }

    private func isEOF(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) == 0
    }

    // MARK: Opens

    func testARefusedOpenEndsThatClientOnlyWithTheServersReason() {
        session.answers = [.refuse("administratively prohibited")]
        let refused = client()
        let next = client()
        loop.add(refused)
        loop.add(next)
        XCTAssertNil(pass())
        XCTAssertTrue(refused.isClosed)
        XCTAssertTrue(isEOF(peer(refused)), "the refused client sees its connection close")
        XCTAssertFalse(next.isClosed, "the next client got its channel")
        XCTAssertEqual(session.channels.count, 1)
        XCTAssertEqual(log.results, ["refused: administratively prohibited"])
    }

    func testAnUnansweredOpenEndsItsClientAtItsDeadlineAndALateChannelIsFreed() {
        session.answers = [.never]
        let stuck = client()
        loop.add(stuck)
        XCTAssertNil(pass())
        XCTAssertEqual(loop.busySince, clock.now, "the open is under way")
        clock.advance(4.9)
        XCTAssertNil(pass())
        XCTAssertFalse(stuck.isClosed, "not before its deadline")
        clock.advance(0.2)
        XCTAssertNil(pass(), "one slow target is no reason to end the session")
        XCTAssertTrue(stuck.isClosed)
        XCTAssertEqual(log.results, ["ssh-failed: the server did not answer the channel open within 5 s"])

        // The server finally answers: the channel nobody wants is freed.
        session.answerStuckOpen()
        XCTAssertNil(pass())
        XCTAssertEqual(session.channels.count, 1)
        XCTAssertTrue(session.channels[0].isFreed)
        XCTAssertNil(loop.busySince, "the session can open again")
        let next = client()
        loop.add(next)
        XCTAssertNil(pass())
        XCTAssertEqual(session.channels.count, 2)
        XCTAssertFalse(session.channels[1].isFreed)
        XCTAssertFalse(next.isClosed)
    }

    func testLibSSH2GivingUpOnAnAbandonedOpenIsNotASessionFailure() {
        session.answers = [.never]
        let stuck = client()
        loop.add(stuck)
        pass()
        clock.advance(5.1)
        pass()
        XCTAssertTrue(stuck.isClosed)
        // 60 s later libssh2 stops waiting (the server kept talking: keepalives were answered).
        session.answers[0] = .giveUp
        clock.advance(57)
        session.receive()
        XCTAssertNil(pass(), "the session lives on")
        let next = client()
        loop.add(next)
        XCTAssertNil(pass())
        XCTAssertFalse(next.isClosed)
        XCTAssertEqual(session.channels.count, 1)
    }

    func testClientsQueuedBehindAStuckOpenCanBeTakenToASibling() {
        session.answers = [.never]
        let stuck = client()
        let behind = client()
        loop.add(stuck)
        loop.add(behind)
        pass()
        XCTAssertTrue(loop.hasQueuedClients)
        XCTAssertEqual(loop.load, 2)
        XCTAssertLessThanOrEqual(loop.nextDeadline, clock.now + SessionSettings.stuckOpenBound, "the loop wakes when the open counts as stuck")
        let moved = loop.takeQueuedClients()
        XCTAssertTrue(moved.count == 1 && moved[0] === behind)
        XCTAssertEqual(loop.load, 1)
        XCTAssertFalse(behind.isClosed, "moving does not end the client")

        // On the sibling, the client keeps the deadline it had: moving never extends a wait.
        let deadline = behind.openDeadline
        clock.advance(1)
        let service = Self.service(connectTimeout: 5)
        let sibling = SessionEventLoop(session: FakeSession(clock: clock), readiness: try! SessionReadiness(wakeup: -1), settings: SessionSettings(key: service.sessionKey, services: [service]), logger: log.logger, clock: { [clock] in clock!.now })
        sibling.add(behind)
        XCTAssertEqual(behind.openDeadline, deadline)
    }

    func testWhileAnOpenIsStuckKeepalivesGoAsGlobalRequestsAndSilenceStillKills() {
        session.answers = [.never]
        loop.add(client())
        pass()
        clock.advance(15)
        XCTAssertNil(pass())
        XCTAssertEqual(session.keepalives, 1, "the open slot is taken, so the probe is a global request")
        clock.advance(30)
        XCTAssertNil(pass())
        clock.advance(15.1)
        XCTAssertEqual(pass(), .died("no answer from the server for 60 s (keepalive)"))
        XCTAssertTrue(session.isAbandoned)
    }

    // MARK: Copying

    func testABannerThatArrivesWithALateOpenConfirmationIsDeliveredAtOnce() throws {
        // The confirmation and the banner arrive together while the pass is under way: the
        // open completes in the settle step, and the banner sits where only a read finds it.
        session.answers = [.open(afterCalls: 1)]
        session.nextChannelInbound = Array("220 mail.example ESMTP\r\n".utf8)
        session.nextChannelHidesInput = true
        let connection = client()
        loop.add(connection)
        XCTAssertNil(pass())
        XCTAssertEqual(session.channels.count, 1, "opened within the pass")
        XCTAssertEqual(String(decoding: readAvailable(peer(connection)), as: UTF8.self), "220 mail.example ESMTP\r\n",
                       "delivered in the same pass, not at the next keepalive")
    }

    func testReadsAreAcknowledgedOncePerPassAfterTheChannelsWereServed() throws {
        // Over a jump host the session answers a small read with a request that needs no
        // answer, unless the pass sent something anyway: so it must be asked last.
        let connection = client()
        loop.add(connection)
        pass()
        let channel = try XCTUnwrap(session.channels.first)
        let up = Array("EHLO laptop\r\n".utf8)
        XCTAssertEqual(send(peer(connection), up, up.count, 0), up.count)
        channel.inbound = Array("250 ok\r\n".utf8)
        let before = session.acknowledgements.count
        pass()
        XCTAssertEqual(session.acknowledgements.count, before + 1, "once per pass")
        XCTAssertEqual(session.acknowledgements.last, up.count, "after the client's bytes went to the channel")
        XCTAssertEqual(String(decoding: readAvailable(peer(connection)), as: UTF8.self), "250 ok\r\n")
    }

    func testDataStillInTheSessionSocketReachesAnIdleClient() throws {
        // Found when the loop moved to epoll (issue 23): nothing read the session socket when
        // no client was ready, so a banner that came after the open waited for a keepalive.
        let connection = client()
        loop.add(connection)
        pass()
        let channel = try XCTUnwrap(session.channels.first)
        pass()
        session.sendThroughSocket(Array("220 mail ESMTP\r\n".utf8), to: channel)
        pass()
        XCTAssertEqual(String(decoding: readAvailable(peer(connection)), as: UTF8.self), "220 mail ESMTP\r\n")
    }

    func testAPassAsksNoIdleChannelWhenTheServerSentNothing() throws {
        var idle: [Connection] = []
        for _ in 0..<200 {
            let connection = client()
            loop.add(connection)
            idle.append(connection)
        }
        pass()
        pass()
        XCTAssertEqual(session.channels.count, 200)
        let asked = session.channels.map(\.bufferQuestions).reduce(0, +)
        // One client speaks: only its own channel moves; nobody asks the 199 idle ones.
        let talker = idle[7]
        XCTAssertEqual(send(peer(talker), "hi", 2, 0), 2)
        pass()
        XCTAssertEqual(session.channels[7].written, Array("hi".utf8))
        XCTAssertEqual(session.channels.map(\.bufferQuestions).reduce(0, +), asked, "no channel was asked: the server sent nothing")
        // The server answers one of them: each channel is asked once, and the answer delivered.
        session.sendThroughSocket(Array("ok".utf8), to: session.channels[7])
        pass()
        XCTAssertEqual(String(decoding: readAvailable(peer(talker)), as: UTF8.self), "ok")
        XCTAssertLessThanOrEqual(session.channels.map(\.bufferQuestions).reduce(0, +) - asked, 2 * 200 + 2)
    }

    func testPartialWritesAndWouldBlockBothWaysLoseNothing() throws {
        let connection = client()
        loop.add(connection)
        pass()
        let channel = try XCTUnwrap(session.channels.first)
        channel.writeLimit = 3
        let up = Array("hello, server: partial writes of three bytes".utf8)
        XCTAssertEqual(send(peer(connection), up, up.count, 0), up.count)
        channel.inbound = Array(repeating: 7, count: 100_000)
        channel.readStalls = 2
        for _ in 0..<40 {
            pass()
            _ = readAvailable(peer(connection)).count
        }
        XCTAssertEqual(channel.written, up)
        XCTAssertTrue(channel.inbound.isEmpty, "everything the server sent was read")
        XCTAssertEqual(connection.bytesDown, 100_000)
    }

    func testAClosedWindowStopsReadingTheClientUntilItOpens() throws {
        let connection = client()
        loop.add(connection)
        pass()
        let channel = try XCTUnwrap(session.channels.first)
        channel.writeLimit = 0
        let first = [UInt8](repeating: 1, count: 1000)
        let second = [UInt8](repeating: 2, count: 1000)
        XCTAssertEqual(send(peer(connection), first, first.count, 0), first.count)
        pass()
        XCTAssertEqual(connection.toServer.count, 1000, "what the channel refused waits")
        XCTAssertEqual(send(peer(connection), second, second.count, 0), second.count)
        pass()
        XCTAssertEqual(connection.bytesUp, 1000, "the client is not read while bytes wait (a re-key or a full window)")
        channel.writeLimit = .max
        pass()
        pass()
        XCTAssertEqual(channel.written, first + second)
    }

    func testServerEOFBeforeAnyDataHalfClosesTheClientThenItsEOFEndsTheConnection() throws {
        let connection = client()
        loop.add(connection)
        pass()
        let channel = try XCTUnwrap(session.channels.first)
        channel.eofFromServer = true
        pass()
        XCTAssertTrue(isEOF(peer(connection)), "channel EOF becomes a half-close of the client")
        XCTAssertFalse(connection.isClosed)
        let bytes = Array("late words".utf8)
        XCTAssertEqual(send(peer(connection), bytes, bytes.count, 0), bytes.count)
        shutdown(peer(connection), Int32(SHUT_WR))
        pass()
        pass()
        XCTAssertEqual(channel.written, bytes, "nothing the client sent after the server's EOF is dropped")
        XCTAssertTrue(channel.eofSent)
        XCTAssertTrue(connection.isClosed)
        XCTAssertTrue(channel.isFreed)
        XCTAssertEqual(log.results, ["ok"])
    }

    // MARK: Failures

    func testASessionThatFailsMidPassClosesEachClientOnceAndKeepsTheWaitingOnes() throws {
        let finishing = client()
        let failing = client()
        loop.add(finishing)
        loop.add(failing)
        pass()
        XCTAssertEqual(session.channels.count, 2)
        session.answers = [.never]
        let waiting = client()
        loop.add(waiting)
        pass()

        // In one pass: the first connection finishes cleanly, then the session fails
        // while the second is read.
        session.channels[0].eofFromServer = true
        shutdown(peer(finishing), Int32(SHUT_WR))
        session.channels[1].readFailure = FakeSession.Failure(description: "the server closed the connection")
        let ending = pass()
        XCTAssertEqual(ending, .died("the server closed the connection"))
        XCTAssertTrue(finishing.isClosed && failing.isClosed)
        XCTAssertEqual(log.results.sorted(), ["ok", "ssh-failed: the server closed the connection"])
        XCTAssertEqual(loop.orphans.count, 1)
        XCTAssertTrue(loop.orphans[0] === waiting && !waiting.isClosed, "a client without a channel is kept for another session")
    }

    func testAChannelOpenedInThePassTheSessionFailsIsNeitherLostNorLeaked() {
        // Found by StuckOpenTests.test03: a client whose channel opened in the same pass as
        // the session failed, during the next open, was in no list: never ended, never moved.
        let opened = client()
        let waiting = client()
        session.answers = [.open(afterCalls: 0), .sessionFails("the server closed the connection")]
        loop.add(opened)
        loop.add(waiting)
        XCTAssertEqual(pass(), .died("the server closed the connection"))
        XCTAssertTrue(opened.isClosed, "the client whose channel had opened is ended with the session")
        XCTAssertEqual(log.results, ["ssh-failed: the server closed the connection"])
        XCTAssertTrue(session.channels[0].isFreed || session.isAbandoned, "its channel goes with the session")
        XCTAssertEqual(loop.orphans.count, 1)
        XCTAssertTrue(loop.orphans.first === waiting, "the client still waiting is kept for another session")
    }

    func testAQuietSessionIsProbedWhenAClientComesAndDiesWithinTheShortBound() {
        clock.advance(20)
        let first = client()
        loop.add(first)
        XCTAssertNil(pass())
        XCTAssertEqual(session.probes, 1, "a client on a quiet session probes it first")
        XCTAssertFalse(first.isClosed)
        XCTAssertEqual(session.channels.count, 1, "then opens its channel")

        // Later the server has gone (a laptop slept): the next client's probe is not answered.
        clock.advance(20)
        session.answersProbes = false
        let second = client()
        loop.add(second)
        XCTAssertNil(pass())
        XCTAssertEqual(session.probes, 2)
        clock.advance(2.9)
        XCTAssertNil(pass())
        clock.advance(0.2)
        XCTAssertEqual(pass(), .died("no answer from the server within 3 s (keepalive)"), "not the 60 s keepalive bound")
        XCTAssertTrue(loop.orphans.count == 1 && loop.orphans[0] === second && !second.isClosed, "the client goes to a fresh session")
    }

    func testASuspectSessionThatDoesNotAnswerDiesWithinThreeSeconds() {
        session.answers = [.never]
        loop.add(client())
        pass()
        loop.markSuspect()
        XCTAssertTrue(loop.isProbing)
        clock.advance(2.9)
        XCTAssertNil(pass())
        clock.advance(0.2)
        XCTAssertEqual(pass(), .died("no answer from the server within 3 s (keepalive)"))
    }

    func testHealthProbesOpenAndCloseAChannelOnScheduleAndReportTheResult() throws {
        var probed = Self.service(connectTimeout: 5, name: "kiosk")
        probed.isPersistent = true
        probed.probeInterval = 10
        let board = HealthBoard()
        loop = SessionEventLoop(session: session, readiness: try! SessionReadiness(wakeup: -1), settings: SessionSettings(key: probed.sessionKey, services: [probed]), logger: log.logger,
                                health: board, clock: { [clock] in clock!.now })
        XCTAssertNil(pass())
        XCTAssertEqual(session.openedTargets, [Endpoint(host: "carbon", port: 6001)], "probed at once")
        XCTAssertTrue(session.channels[0].isFreed, "and its channel closed at once")
        XCTAssertEqual(board.result(for: "kiosk")?.detail, "ok")
        XCTAssertEqual(loop.nextDeadline, clock.now + .seconds(10))

        // The SIP2 server forgot to start: the next probe says so.
        session.answers = [.refuse("connect failed")]
        clock.advance(5)
        pass()
        XCTAssertEqual(session.openedTargets.count, 1, "not before its interval")
        clock.advance(5)
        session.receive()
        pass()
        XCTAssertEqual(board.result(for: "kiosk"), HealthBoard.Result(isUp: false, detail: "refused: connect failed", at: board.result(for: "kiosk")!.at))
        XCTAssertEqual(log.results, [], "probes are not connections")
    }

    func testConnectionFinishClosesItsDescriptorExactlyOnce() {
        let connection = client()
        let fd = connection.input
        XCTAssertTrue(connection.finish(.ok, logger: log.logger))
        // The kernel hands the number to the next descriptor opened.
        var ends: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends)
        defer { close(ends[0]); close(ends[1]) }
        XCTAssertTrue(ends.contains(fd), "the number was reused")
        XCTAssertFalse(connection.finish(.shutdown, logger: log.logger), "a finished connection cannot finish again")
        XCTAssertNotEqual(fcntl(fd, F_GETFD), -1, "the descriptor now owned by someone else is still open")
        XCTAssertEqual(connection.input, -1, "a finished connection holds no descriptor")
        XCTAssertEqual(log.results, ["ok"], "one log line")
    }
}

/// Log lines kept in memory.
final class CapturedLog: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [(message: String, metadata: Logger.Metadata)] = []

    var logger: Logger {
        Logger(label: "test") { _ in Handler(log: self) }
    }

    /// The `result` of every `connection closed` line, in order.
    var results: [String] {
        lock.lock()
        defer { lock.unlock() }
        return entries.filter { $0.message == "connection closed" }.compactMap { $0.metadata["result"].map { "\($0)" } }
    }

    fileprivate func append(_ message: String, _ metadata: Logger.Metadata) {
        lock.lock()
        entries.append((message, metadata))
        lock.unlock()
    }

    private struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
            log.append("\(message)", self.metadata.merging(metadata ?? [:]) { $1 })
        }
    }
}
