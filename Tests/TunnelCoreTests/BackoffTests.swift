import Platform
import XCTest
@testable import TunnelCore

/// Backoff throttles tunneld, never a client; a suspend is noticed from the clocks (issue 11).
final class BackoffTests: XCTestCase {
    func testRetriesDoubleFromOneSecondToThirtyAndASuccessResets() {
        var backoff = Backoff()
        let start = ContinuousClock.now
        let delays = (0..<7).map { _ in backoff.failed("Network is unreachable", now: start) }
        XCTAssertEqual(delays, [1, 2, 4, 8, 16, 30, 30])
        backoff.succeeded()
        XCTAssertNil(backoff.wait(now: start))
        XCTAssertEqual(backoff.failed("again", now: start), 1)
    }

    func testAClientIsRefusedOnlyWithinASecondOfAFailedAttempt() {
        var backoff = Backoff()
        let failedAt = ContinuousClock.now
        for _ in 0..<6 { _ = backoff.failed("cannot connect to mail:22: connect: Network is unreachable", now: failedAt) }
        XCTAssertEqual(backoff.wait(now: failedAt), 30, "tunneld's own next retry is 30 s away")
        XCTAssertEqual(backoff.refusal(now: failedAt + .milliseconds(300)), "cannot connect to mail:22: connect: Network is unreachable",
                       "right after a failure, a client is refused with its reason (offline fails fast)")
        XCTAssertNil(backoff.refusal(now: failedAt + .milliseconds(1001)),
                     "a second later a client starts a connect at once, although tunneld's own retry is far off")
        XCTAssertTrue(backoff.allowsClientAttempt(now: failedAt + .seconds(2)))
    }

    func testAResetForgetsTheFailuresButKeepsTheErrorForStatus() {
        var backoff = Backoff()
        let now = ContinuousClock.now
        _ = backoff.failed("Network is unreachable", now: now)
        backoff.reset()
        XCTAssertNil(backoff.refusal(now: now), "the network came back: the next client tries at once")
        XCTAssertNil(backoff.wait(now: now))
        XCTAssertEqual(backoff.lastError, "Network is unreachable")
    }

    func testASuspendIsNoticedWhenBootTimeRunsAheadOfMonotonicTime() {
        let offset = Locked<Int64>(5_000_000_000)
        var detector = SuspendDetector(readOffset: { offset.withLock { $0 } })
        XCTAssertFalse(detector.resumedFromSuspend())
        offset.withLock { $0 += 200_000_000 }
        XCTAssertFalse(detector.resumedFromSuspend(), "a blip is no suspend")
        offset.withLock { $0 += 42_000_000_000 }
        XCTAssertTrue(detector.resumedFromSuspend(), "42 s asleep")
        XCTAssertFalse(detector.resumedFromSuspend(), "noticed once")
    }
}
