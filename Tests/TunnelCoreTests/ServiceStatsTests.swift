import TunnelConfig
import XCTest
@testable import TunnelCore

final class ServiceStatsTests: XCTestCase {
    func testCountsLiveTotalBytesAndRefusalsByReason() {
        let stats = ServiceStats()
        for _ in 0..<4 { stats.connectionStarted() }
        stats.connectionEnded(.ok, bytesUp: 10, bytesDown: 20)
        stats.connectionEnded(.refused("administratively prohibited"), bytesUp: 0, bytesDown: 0)
        stats.connectionEnded(.sshFailed("unknown host key"), bytesUp: 0, bytesDown: 0)

        let snapshot = stats.snapshot
        XCTAssertEqual(snapshot.live, 1)
        XCTAssertEqual(snapshot.total, 4)
        XCTAssertEqual(snapshot.bytesUp, 10)
        XCTAssertEqual(snapshot.bytesDown, 20)
        XCTAssertEqual(snapshot.refusals, ["refused: administratively prohibited": 1, "ssh-failed": 1])
        XCTAssertEqual(snapshot.lastError, "ssh-failed: unknown host key")
        XCTAssertNotNil(snapshot.lastErrorAt)
    }

    func testOutcomesReadAsTheLogSaysThem() {
        XCTAssertEqual("\(ConnectionOutcome.ok)", "ok")
        XCTAssertEqual("\(ConnectionOutcome.refused("connect failed"))", "refused: connect failed")
        XCTAssertEqual("\(ConnectionOutcome.limit(.perSource))", "limit: per_source")
        XCTAssertNil(ConnectionOutcome.clientError("Broken pipe").refusalKind)
    }
}

final class ReloadIdentityTests: XCTestCase {
    private func service(port: UInt16, line: Int) -> Service {
        Service(
            name: "smtp", location: SourceLocation(file: "services.d/smtp", line: line),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: port)),
            route: Route(server: Endpoint(host: "mail.example.org", port: 22), user: "mail"),
            forwarding: Forwarding(target: Endpoint(host: "localhost", port: 25)))
    }

    func testMovingAStanzaInItsFileIsNoChange() {
        XCTAssertTrue(Daemon.isSame(service(port: 7777, line: 3), service(port: 7777, line: 9)))
        XCTAssertFalse(Daemon.isSame(service(port: 7777, line: 3), service(port: 7778, line: 3)))
    }
}

final class FormattingTests: XCTestCase {
    func testThreeDecimalsAsTheLogWritesDurations() {
        XCTAssertEqual(0.0123.threeDecimals, "0.012")
        XCTAssertEqual(1.5.threeDecimals, "1.500")
        XCTAssertEqual(12.0006.threeDecimals, "12.001")
        XCTAssertEqual(0.0.threeDecimals, "0.000")
    }
}
