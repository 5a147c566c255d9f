import Glibc
import Logging
import Platform
import TunnelConfig
import XCTest
@testable import TunnelCore

/// The pool carries out its decision core's commands with real session threads over the
/// factory seam: scripted sessions, no sshd (issue 19).
final class SessionPoolTests: XCTestCase {
    /// Hands out scripted sessions, or a connect failure, and counts the connects.
    private final class FakeFactory: SessionFactory, @unchecked Sendable {
        let sessions = Locked<[FakeSession]>([])
        let failure: String?
        let banner: [UInt8]

        init(failure: String? = nil, banner: String = "") {
            self.failure = failure
            self.banner = Array(banner.utf8)
        }

        func connect(_ settings: SessionSettings, logger: Logger) throws -> any TunnelSession {
            if let failure { throw ConnectFailure(description: failure) }
            let session = FakeSession(clock: ManualClock())
            session.nextChannelInbound = banner
            sessions.withLock { $0.append(session) }
            return session
        }
    }

    private let service = SessionEventLoopTests.service(connectTimeout: 3)

    /// A client connected through a socket pair; returns its connection and the test's end.
    private func client() -> (Connection, Int32) {
        var ends: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends)
        Socket.setNonBlocking(ends[0])
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(ends[1], SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return (Connection(client: ClientEnd(socket: ends[0]), peer: Endpoint(host: "127.0.0.1", port: 40000), service: service, stats: ServiceStats()), ends[1])
    }

    func testAClientGetsItsChannelOnASessionFromTheFactory() {
        let factory = FakeFactory(banner: "220 mail.example ESMTP\r\n")
        let pool = SessionPool(services: [service], logger: CapturedLog().logger, factory: factory)
        defer { pool.stopAll(drainUntil: .now) }
        let (connection, peer) = client()
        defer { close(peer) }
        pool.dispatch(connection)
        var banner = [UInt8](repeating: 0, count: 64)
        let count = recv(peer, &banner, banner.count, 0)
        XCTAssertEqual(String(decoding: banner.prefix(max(count, 0)), as: UTF8.self), "220 mail.example ESMTP\r\n", "the server's first bytes reach the client")
        XCTAssertEqual(factory.sessions.withLock { $0.count }, 1)
        XCTAssertEqual(pool.status(of: service.sessionKey).state, .up)
    }

    func testAFailedConnectRefusesItsClientWithTheReasonAndTheNextOneFast() {
        let reason = "cannot connect to bastion:22: connect: Network is unreachable"
        let log = CapturedLog()
        let pool = SessionPool(services: [service], logger: log.logger, factory: FakeFactory(failure: reason))
        defer { pool.stopAll(drainUntil: .now) }
        let (first, firstPeer) = client()
        defer { close(firstPeer) }
        pool.dispatch(first)
        var byte: UInt8 = 0
        XCTAssertEqual(recv(firstPeer, &byte, 1, 0), 0, "closed")
        let (second, secondPeer) = client()
        defer { close(secondPeer) }
        let started = ContinuousClock.now
        pool.dispatch(second)
        XCTAssertTrue(second.isClosed, "within a second of the failure: refused at once, no new connect")
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(100))
        // The first client's line is written on its session's thread just after its close.
        let deadline = ContinuousClock.now + .seconds(2)
        while log.results.count < 2 && ContinuousClock.now < deadline { usleep(1_000) }
        XCTAssertEqual(log.results, ["ssh-failed: \(reason)", "ssh-failed: \(reason)"])
        let status = pool.status(of: service.sessionKey)
        XCTAssertEqual(status.lastError, reason)
        XCTAssertEqual(status.connectFailures, 1)
    }
}
