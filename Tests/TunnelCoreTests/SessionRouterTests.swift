import XCTest
@testable import TunnelCore

/// Where a client goes among a server's sessions (issues 10 and 11).
final class SessionRouterTests: XCTestCase {
    private let now = ContinuousClock.now

    private func gauge(_ phase: SessionSupervisor.Phase, load: Int = 0, busyFor seconds: Double? = nil, suspect: Bool = false) -> SessionSupervisor.Gauge {
        SessionSupervisor.Gauge(phase: phase, load: load, busySince: seconds.map { now - Duration(seconds: $0) }, isSuspect: suspect)
    }

    private func route(_ gauges: [SessionSupervisor.Gauge], avoiding: Int? = nil, max: Int = 4, refusal: String? = nil) -> SessionRouter.Route {
        SessionRouter.route(gauges, avoiding: avoiding, maxSessions: max, refusal: refusal, now: now)
    }

    func testTheFirstClientStartsASession() {
        XCTAssertEqual(route([]), .startSession)
    }

    func testClientsGoToTheLeastLoadedSessionAndSpreadOnlyWhenSessionsAreBusy() {
        XCTAssertEqual(route([gauge(.up, load: 3), gauge(.up, load: 1)]), .session(1))
        XCTAssertEqual(route([gauge(.up, load: 4)]), .startSession, "a busy session gets a sibling while there is room")
        XCTAssertEqual(route([gauge(.up, load: 9)], max: 1), .session(0), "sessions = 1 shares one session, however busy")
        XCTAssertEqual(route([gauge(.up, load: 4), gauge(.up, load: 5), gauge(.up, load: 6), gauge(.up, load: 7)]), .session(0), "no room: least loaded")
    }

    func testAtMostOneConnectPerServerIsUnderWay() {
        XCTAssertEqual(route([gauge(.connecting, load: 3)]), .session(0), "clients wait for the connect under way")
        XCTAssertEqual(route([gauge(.up, load: 5), gauge(.connecting, load: 1)]), .session(1))
    }

    func testAStuckOpenSendsTheNextClientsElsewhere() {
        XCTAssertEqual(route([gauge(.up, load: 1, busyFor: 0.1)]), .session(0), "an open under way for 100 ms is normal")
        XCTAssertEqual(route([gauge(.up, load: 1, busyFor: 0.3)]), .startSession, "stuck for 300 ms: a sibling")
        XCTAssertEqual(route([gauge(.up, load: 1, busyFor: 5), gauge(.up, load: 2)]), .session(1))
        XCTAssertEqual(route([gauge(.up, load: 1, busyFor: 5)], max: 1), .session(0), "no sibling allowed: it waits its turn")
    }

    func testAClientMovingOffAStuckSessionGoesBackOnlyIfNothingElseCan() {
        XCTAssertEqual(route([gauge(.up, load: 2, busyFor: 1), gauge(.up, load: 1)], avoiding: 0), .session(1))
        XCTAssertEqual(route([gauge(.up, load: 2, busyFor: 1)], avoiding: 0), .startSession, "room for a sibling")
        XCTAssertEqual(route([gauge(.up, load: 2, busyFor: 1)], avoiding: 0, max: 1), .session(0), "sessions = 1: back where it was")
    }

    func testBackoffRefusesOnlyWithinTheFloorAndNeverWhenASessionIsUp() {
        let reason = "cannot connect to mail:22: connect: Network is unreachable"
        XCTAssertEqual(route([], refusal: reason), .refuse(reason), "offline fails fast, with the reason")
        XCTAssertEqual(route([gauge(.up, load: 7)], refusal: reason), .session(0), "a live session still serves")
        XCTAssertEqual(route([gauge(.backingOff)]), .session(0), "past the floor, a persistent session in backoff connects at once")
        XCTAssertEqual(route([gauge(.backingOff)], refusal: reason), .refuse(reason))
    }

    func testSuspectSessionsRaceAFreshOne() {
        XCTAssertEqual(route([gauge(.up, load: 1, suspect: true)], max: 1), .startSession, "after a wake, the first client does not wait on the old session")
        XCTAssertEqual(route([gauge(.up, load: 1, suspect: true), gauge(.connecting)], max: 1), .session(1), "and the next ones wait for the fresh one")
        XCTAssertEqual(route([gauge(.up, load: 1, suspect: true), gauge(.up, load: 3)]), .session(1))
        XCTAssertEqual(route([gauge(.retired, load: 9)], max: 1), .startSession, "a retired session counts for nothing")
    }
}
