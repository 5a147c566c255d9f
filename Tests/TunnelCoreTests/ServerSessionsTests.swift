import TunnelConfig
import XCTest
@testable import TunnelCore

/// The decision core of one server's sessions, rule by rule (issue 19): events in, commands
/// out, a manual clock, no threads or sockets.
final class ServerSessionsTests: XCTestCase {
    typealias Core = ServerSessions<String>

    private let clock = ManualClock()
    private let mail = Endpoint(host: "localhost", port: 25)
    private let good = Endpoint(host: "localhost", port: 7)
    private let route = RouteFacts(interface: 2, source: "192.0.2.10", gateway: "192.0.2.1", isLinkUp: true)

    private func core(sessions: Int = 4, persistent: Bool = false) -> Core {
        var service = Service(
            name: "mail", location: SourceLocation(file: "test.conf", line: 1),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 7777)),
            route: Route(server: Endpoint(host: "mail.example.org", port: 22), user: "alice"),
            forwarding: Forwarding(target: mail),
            policy: SessionPolicy(isPersistent: persistent))
        service.sessions = sessions
        return Core(settings: SessionSettings(key: service.sessionKey, services: [service]))
    }

    private func dead(_ number: Int) -> Endpoint { Endpoint(host: "192.0.2.\(number)", port: 443) }

    @discardableResult
    private func send(_ core: inout Core, _ event: Core.Event) -> [Core.Command] {
        core.handle(event, now: clock.now)
    }

    private func arrive(_ core: inout Core, _ client: String, to target: Endpoint, avoiding: Int? = nil) -> [Core.Command] {
        send(&core, .clientArrived(client, target: target, avoiding: avoiding))
    }

    /// A session that connected and is up, carrying `load`.
    private func up(_ core: inout Core, _ id: Int, load: Int = 1) {
        send(&core, .connected(id, route: .route(route)))
        send(&core, .report(id, load: load, openUnderWay: nil, isProbing: false))
    }

    /// The session whose open to `target` has been under way since `seconds` ago.
    private func stuck(_ core: inout Core, _ id: Int, on target: Endpoint, load: Int = 1, for seconds: Double = 1) {
        send(&core, .report(id, load: load, openUnderWay: .init(target: target, since: clock.now - Duration(seconds: seconds)), isProbing: false))
    }

    // MARK: Routing

    func testTheFirstClientStartsASessionAndLaterOnesWaitForTheConnectUnderWay() {
        var core = core()
        XCTAssertEqual(describe(arrive(&core, "a", to: mail)), ["start 1", "hand a 1"])
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["hand b 1"], "one connect per server at a time")
        up(&core, 1, load: 2)
        XCTAssertEqual(describe(arrive(&core, "c", to: mail)), ["hand c 1"])
    }

    func testClientsSpreadOverSessionsOnlyWhenTheyAreBusy() {
        var core = core(sessions: 2)
        _ = arrive(&core, "a", to: mail)
        up(&core, 1, load: 4)
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["start 2", "hand b 2"], "a busy session gets a sibling while there is room")
        up(&core, 2, load: 5)
        XCTAssertEqual(describe(arrive(&core, "c", to: mail)), ["hand c 1"], "no room: the least loaded")
    }

    func testStuckSessionsDoNotCountTowardSessions() {
        var core = core(sessions: 1)
        _ = arrive(&core, "hole", to: dead(1))
        up(&core, 1)
        stuck(&core, 1, on: dead(1))
        XCTAssertEqual(describe(arrive(&core, "mail", to: mail)), ["start 2", "hand mail 2"], "sessions = 1, but the one session is stuck")
    }

    func testThirtyTwoStuckOpensNeverStarveAnotherTarget() {
        var core = core()
        // Eight dead targets, four clients each: each target's first client gets stuck on a
        // session of its own; the others wait behind it.
        var next = 1
        for target in 1...8 {
            let commands = arrive(&core, "hole\(target)-0", to: dead(target))
            XCTAssertEqual(describe(commands), ["start \(next)", "hand hole\(target)-0 \(next)"])
            up(&core, next)
            stuck(&core, next, on: dead(target))
            for client in 1...3 {
                XCTAssertEqual(describe(arrive(&core, "hole\(target)-\(client)", to: dead(target))), ["hand hole\(target)-\(client) \(next)"],
                               "a client whose target has an open stuck waits behind that open")
            }
            next += 1
        }
        XCTAssertEqual(core.sessions.count, 8)
        XCTAssertEqual(describe(arrive(&core, "mail", to: mail)), ["start 9", "hand mail 9"], "the live service gets a session of its own at once")
        up(&core, 9)
        XCTAssertEqual(describe(arrive(&core, "mail2", to: mail)), ["hand mail2 9"])
    }

    func testAClientHandedBackFromAStuckSessionGoesToASibling() {
        var core = core()
        _ = arrive(&core, "hole", to: dead(1))
        up(&core, 1)
        _ = arrive(&core, "mail", to: mail)
        stuck(&core, 1, on: dead(1), load: 2)
        XCTAssertEqual(describe(arrive(&core, "mail", to: mail, avoiding: 1)), ["start 2", "hand mail 2"])
        XCTAssertEqual(describe(arrive(&core, "hole-2", to: dead(1), avoiding: 2)), ["hand hole-2 1"], "behind the open stuck on its own target")
    }

    func testClientsHandedBackFromAStuckOpenGetASessionPerTargetAndNeverStandBeforeAnotherTarget() {
        var core = core()
        _ = arrive(&core, "first", to: dead(1))
        up(&core, 1)
        stuck(&core, 1, on: dead(1), load: 9)
        // The supervisor hands back what queued behind the stuck open: two more dead targets
        // (two clients each) and a client of the live service.
        XCTAssertEqual(describe(arrive(&core, "d2a", to: dead(2), avoiding: 1)), ["start 2", "hand d2a 2"])
        XCTAssertEqual(describe(arrive(&core, "d3a", to: dead(3), avoiding: 1)), ["start 3", "hand d3a 3"])
        XCTAssertEqual(describe(arrive(&core, "d2b", to: dead(2), avoiding: 1)), ["hand d2b 2"], "with its target's session")
        XCTAssertEqual(describe(arrive(&core, "mail", to: mail, avoiding: 1)), ["start 4", "hand mail 4"])
        // A new client of the live service takes no session dedicated to a target not yet
        // known to answer.
        XCTAssertEqual(describe(arrive(&core, "mail2", to: mail)), ["hand mail2 4"])
        XCTAssertEqual(describe(arrive(&core, "web", to: good)), ["start 5", "hand web 5"], "dedicated sessions do not count toward sessions")
        // Once the live target's open is answered, its session is an ordinary one.
        up(&core, 4)
        send(&core, .report(4, load: 2, openUnderWay: .init(target: mail, since: clock.now), isProbing: false))
        send(&core, .report(4, load: 2, openUnderWay: nil, isProbing: false))
        XCTAssertNil(core.sessions[4]!.dedicatedTarget)
    }

    func testAnOpenUnderWayForLessThanTheBoundIsNotStuck() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        stuck(&core, 1, on: mail, for: 0.1)
        XCTAssertEqual(describe(arrive(&core, "b", to: good)), ["hand b 1"])
        clock.advance(0.2)
        XCTAssertEqual(describe(arrive(&core, "c", to: good)), ["start 2", "hand c 2"], "past 250 ms it is stuck")
    }

    func testTheHardCapIsSaidOnceAndClientsThenShareTheLeastLoadedSession() {
        var core = core(sessions: 1)
        let cap = core.hardCap
        XCTAssertEqual(cap, 1 + Core.stuckAllowance)
        for id in 1...cap {
            _ = arrive(&core, "hole\(id)", to: dead(id))
            up(&core, id)
            stuck(&core, id, on: dead(id), load: id == 3 ? 0 : 2)
        }
        XCTAssertEqual(describe(arrive(&core, "late", to: dead(200))), ["cap \(cap)", "hand late 3"])
        XCTAssertEqual(describe(arrive(&core, "later", to: dead(201))), ["hand later 3"], "the cap is said once")
    }

    // MARK: Backoff

    func testAFailedConnectRefusesItsClientsAndFailsFastForASecond() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        let reason = "cannot connect to mail.example.org:22: connect: Network is unreachable"
        XCTAssertEqual(describe(send(&core, .connectFailed(1, reason: reason, isLocalShortage: false, clients: ["a", "b"]))),
                       ["refuse a \(reason)", "refuse b \(reason)"])
        XCTAssertEqual(describe(arrive(&core, "c", to: mail)), ["refuse c \(reason)"], "offline fails fast, with the reason")
        clock.advance(1.1)
        XCTAssertEqual(describe(arrive(&core, "d", to: mail)), ["start 2", "hand d 2"], "past the floor a client starts a connect at once")
        XCTAssertEqual(core.connectFailures, 1)
    }

    func testAPersistentServerReconnectsWhenItsBackoffEnds() {
        var core = core(persistent: true)
        XCTAssertEqual(describe(send(&core, .tick)), ["start 1 persistent"])
        _ = send(&core, .connectFailed(1, reason: "refused", isLocalShortage: false, clients: []))
        XCTAssertEqual(describe(send(&core, .tick)), [], "backing off")
        XCTAssertEqual(core.nextTick, clock.now + .seconds(1))
        clock.advance(1)
        XCTAssertEqual(describe(send(&core, .tick)), ["start 2 persistent"])
        up(&core, 2)
        XCTAssertNil(core.nextTick)
        XCTAssertEqual(describe(send(&core, .ended(2, diedOf: "the server closed the connection", orphans: [], servedAnyone: true, lifetime: .seconds(60)))),
                       ["start 3 persistent"], "a persistent session that died comes back at once")
    }

    // MARK: Sessions that end

    func testClientsOfASessionThatDiedGetOneMoreSession() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1, load: 2)
        let orphans = [Core.Orphan(client: "a", target: mail, isRetry: false), Core.Orphan(client: "b", target: mail, isRetry: true)]
        XCTAssertEqual(describe(send(&core, .ended(1, diedOf: "lost", orphans: orphans, servedAnyone: true, lifetime: .seconds(30)))),
                       ["start 2", "hand a 2", "refuse b lost"])
    }

    func testASessionThatDiesRightAfterLoginCountsAsAFailedConnect() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        _ = send(&core, .ended(1, diedOf: "the server closed the connection", orphans: [], servedAnyone: false, lifetime: .milliseconds(300)))
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["refuse b the server closed the connection"])
    }

    // MARK: Network changes

    func testAnUnrelatedNetworkChangeCostsNothing() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        XCTAssertEqual(describe(send(&core, .networkChanged)), ["check-route 1"])
        XCTAssertEqual(describe(send(&core, .routeChecked(1, .route(route)))), [], "same route: no probe")
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["hand b 1"], "and no new session")
    }

    func testAChangedRouteProbesTheSessionWhileAFreshOneTakesNewClients() {
        var core = core(sessions: 1)
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        var moved = route
        moved.source = "198.51.100.7"
        _ = send(&core, .networkChanged)
        XCTAssertEqual(describe(send(&core, .routeChecked(1, .route(moved)))), ["probe 1"])
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["start 2", "hand b 2"], "the fresh session races the probe")
        send(&core, .report(1, load: 1, openUnderWay: nil, isProbing: false))
        XCTAssertFalse(core.sessions[1]!.isSuspect, "answered: alive again")
    }

    func testALinkThatWentDownMakesItsSessionsSuspect() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        var down = route
        down.isLinkUp = false
        XCTAssertEqual(describe(send(&core, .routeChecked(1, .route(down)))), ["probe 1"])
    }

    func testASessionWithoutARouteOrAddressIsKilledAtOnce() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        up(&core, 1)
        XCTAssertEqual(describe(send(&core, .routeChecked(1, .gone("no route to the server: the network is down")))),
                       ["kill 1 no route to the server: the network is down"])
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["start 2", "hand b 2"])
    }

    func testAWakeSuspectsEverySessionAndForgetsTheBackoff() {
        var core = core()
        _ = arrive(&core, "a", to: mail)
        _ = send(&core, .connectFailed(1, reason: "offline", isLocalShortage: false, clients: []))
        _ = arrive(&core, "b", to: mail)
        XCTAssertEqual(describe(send(&core, .suspectAll)), [], "no session up: nothing to probe")
        _ = arrive(&core, "c", to: mail)
        up(&core, 2)
        XCTAssertEqual(describe(send(&core, .suspectAll)), ["check-route 2", "probe 2"])
    }

    func testAJumpHostsSessionsFollowTheSameRules() {
        let bastion = Route(server: Endpoint(host: "bastion", port: 22), user: "kiosk")
        var service = Service(
            name: "sip2", location: SourceLocation(file: "test.conf", line: 1),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 6001)),
            route: Route(server: Endpoint(host: "carbon", port: 22), user: "kiosk", jump: [bastion]),
            forwarding: Forwarding(target: Endpoint(host: "carbon", port: 6001)))
        service.sessions = 1
        var core = Core(settings: SessionSettings.byKey([service])[bastion]!)
        let hop = Endpoint(host: "carbon", port: 22)
        _ = arrive(&core, "link", to: hop)
        send(&core, .connected(1, route: .route(route)))
        stuck(&core, 1, on: dead(9))
        XCTAssertEqual(describe(arrive(&core, "link2", to: hop)), ["start 2", "hand link2 2"])
    }

    // MARK: Reload and stop

    func testStoppingRefusesNewClients() {
        var core = core()
        _ = send(&core, .stop)
        XCTAssertEqual(describe(arrive(&core, "a", to: mail)), ["refuse a tunneld is stopping"])
    }

    private func describe(_ commands: [Core.Command]) -> [String] {
        commands.map { command in
            switch command {
            case .start(let id, let persistent): return "start \(id)" + (persistent ? " persistent" : "")
            case .hand(let client, let id): return "hand \(client) \(id)"
            case .refuse(let client, let reason): return "refuse \(client) \(reason)"
            case .probe(let id): return "probe \(id)"
            case .kill(let id, let reason): return "kill \(id) \(reason)"
            case .retire(let id): return "retire \(id)"
            case .checkRoute(let id): return "check-route \(id)"
            case .capReached(let count): return "cap \(count)"
            }
        }
    }
}
