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

    private func core(sessions: Int = 4, most: Int? = nil, persistent: Bool = false) -> Core {
        var service = Service(
            name: "mail", location: SourceLocation(file: "test.conf", line: 1),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 7777)),
            route: Route(server: Endpoint(host: "mail.example.org", port: 22), user: "alice"),
            forwarding: Forwarding(target: mail),
            policy: SessionPolicy(isPersistent: persistent))
        service.sessions = sessions
        if let most { service.mostSessions = most }
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

    // MARK: Bursts (issue 23)

    /// Four sessions up, each with `waiting` clients queued for a channel and answering an
    /// open in `answer` seconds, after connects that took 30 ms.
    private func fourBusySessions(_ core: inout Core, waiting: Int, answer: Double) {
        for index in 1...4 {
            _ = arrive(&core, "c\(index)", to: mail)
            if index <= 4 { clock.advance(0.03); up(&core, index, load: 4) }
        }
        for id in 1...4 { busy(&core, id, waiting: waiting, answer: answer) }
    }

    private func busy(_ core: inout Core, _ id: Int, waiting: Int, answer: Double, answered: Int = 0, held: Int = 0) {
        send(&core, .report(id, load: held + waiting, openUnderWay: nil, isProbing: false,
                            opens: .init(waiting: waiting, answerSeconds: answer, answered: answered)))
    }

    private func started(_ commands: [Core.Command]) -> [Int] {
        commands.compactMap { if case .start(let id, _) = $0 { return id } else { return nil } }
    }

    func testABurstStartsSessionsBeyondSessionsWithinTheCapOneConnectAtATime() {
        var core = core(sessions: 4)
        fourBusySessions(&core, waiting: 0, answer: 0.001)
        XCTAssertEqual(describe(arrive(&core, "calm", to: mail)).count, 1, "short queues: no new session")
        XCTAssertEqual(core.sessions.count, 4)

        // 2,000 clients queued on each: a new client would wait 2 s for its open to start.
        fourBusySessions(&core, waiting: 2000, answer: 0.001)
        XCTAssertEqual(describe(arrive(&core, "b1", to: mail)), ["start 5", "burst 5", "hand b1 5"])
        XCTAssertEqual(describe(arrive(&core, "b2", to: mail)), ["hand b2 5"], "the burst session takes clients while it connects")
        var peak = core.sessions.count
        var connectingPeak = 0
        for index in 0..<6000 {
            _ = arrive(&core, "r\(index)", to: mail)
            peak = max(peak, core.sessions.count)
            connectingPeak = max(connectingPeak, core.sessions.values.filter { $0.phase == .connecting }.count)
            if index % 100 == 99 {
                // Connecting sessions come up, their queues still long.
                clock.advance(0.03)
                for id in core.sessions.keys.sorted() where core.sessions[id]!.phase == .connecting {
                    up(&core, id, load: 0)
                    busy(&core, id, waiting: 2000, answer: 0.001)
                }
            }
        }
        XCTAssertEqual(peak, core.hardCap, "the burst raised the sessions to the cap, not beyond")
        XCTAssertEqual(connectingPeak, Core.burstConnects)
        XCTAssertEqual(core.burstSessions, core.hardCap - 4)
    }

    func testAfterABurstItsSessionsTakeNoClientsAndLingerOut() {
        var core = core(sessions: 2)
        for index in 1...2 {
            _ = arrive(&core, "c\(index)", to: mail)
            clock.advance(0.03)
            up(&core, index, load: 4)
        }
        busy(&core, 1, waiting: 1000, answer: 0.001)
        busy(&core, 2, waiting: 1000, answer: 0.001)
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["start 3", "burst 3", "hand b 3"])
        up(&core, 3, load: 1)

        // The burst is served: every queue is short again.
        for id in 1...3 { busy(&core, id, waiting: 0, answer: 0.001, answered: 1000, held: id == 3 ? 0 : 3) }
        for index in 0..<20 {
            let commands = describe(arrive(&core, "after\(index)", to: mail))
            XCTAssertFalse(commands.contains("hand after\(index) 3"), "a burst session gets no client once the burst is over: \(commands)")
            for id in 1...2 { busy(&core, id, waiting: 0, answer: 0.001, answered: 1000 + index, held: 3) }
        }
        // It lingers out (its loop ends it when idle), and the server is back to its sessions.
        send(&core, .ended(3, diedOf: nil, orphans: [], servedAnyone: true, lifetime: .seconds(60)))
        XCTAssertEqual(core.sessions.count, 2)
        XCTAssertEqual(core.burstSessions, 0)
    }

    func testOnAFarServerAQueueShorterThanAConnectStartsNoSession() {
        var core = core(sessions: 1)
        _ = arrive(&core, "a", to: mail)
        clock.advance(0.8)  // a far server: connecting takes 0.8 s
        up(&core, 1, load: 1)
        busy(&core, 1, waiting: 3, answer: 0.15)
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["hand b 1"], "0.45 s in the queue beats a 0.8 s connect")
        busy(&core, 1, waiting: 8, answer: 0.15)
        XCTAssertEqual(describe(arrive(&core, "c", to: mail)), ["start 2", "burst 2", "hand c 2"], "1.2 s in the queue does not")
    }

    func testNewClientsGoToALighterSessionWhenEverySessionIsHeavy() {
        var core = core(sessions: 4)
        fourBusySessions(&core, waiting: 0, answer: 0.001)
        for id in 1...4 { busy(&core, id, waiting: 0, answer: 0.001, held: Core.heavyLoad + id) }
        // Thousands held, none waiting: sshd walks every channel of a session on each pass.
        XCTAssertEqual(describe(arrive(&core, "smtp", to: mail)), ["start 5", "burst 5", "hand smtp 5"])
        XCTAssertEqual(describe(arrive(&core, "next", to: mail)), ["hand next 5"], "the light session, while it connects")
        up(&core, 5, load: 2)
        XCTAssertEqual(describe(arrive(&core, "later", to: mail)), ["hand later 5"])
        // Once it is heavy too, the next one starts; none beyond the hard cap.
        busy(&core, 5, waiting: 0, answer: 0.001, held: Core.heavyLoad)
        XCTAssertEqual(started(arrive(&core, "more", to: mail)), [6])
    }

    func testUnderOverloadAClientIsRefusedAtOnceWithTheReasonNotAtItsDeadline() {
        var core = core(sessions: 1)
        let cap = core.hardCap
        for id in 1...cap {
            if id == 1 {
                _ = arrive(&core, "first", to: mail)
            } else {
                XCTAssertEqual(started(arrive(&core, "burst\(id)", to: mail)), [id])
            }
            clock.advance(0.03)
            up(&core, id, load: 0)
            // The server answers an open every 50 ms and each queue holds 400: 20 s to wait.
            busy(&core, id, waiting: 400, answer: 0.05)
        }
        XCTAssertEqual(core.sessions.count, cap)
        let commands = describe(arrive(&core, "late", to: mail))
        XCTAssertEqual(commands.count, 1)
        XCTAssertTrue(commands[0].hasPrefix("refuse late overloaded: \(400 * cap) clients wait for a channel to mail.example.org:22 on \(cap) sessions"), commands[0])
        XCTAssertTrue(commands[0].hasSuffix("past connect_timeout (10 s)"), commands[0])
        XCTAssertEqual(core.overloadRefusals, 1)

        // A queue that would be served within connect_timeout still takes the client.
        busy(&core, 2, waiting: 100, answer: 0.05)
        XCTAssertEqual(describe(arrive(&core, "later", to: mail)), ["hand later 2"])
    }

    func testPinnedSessionsStartNoBurstSessionAndRefuseOverloadAtOnce() {
        var core = core(sessions: 1, most: 1)
        _ = arrive(&core, "a", to: mail)
        up(&core, 1, load: 1)
        busy(&core, 1, waiting: 500, answer: 0.001)
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["hand b 1"], "0.5 s to wait, but sessions = 1 1")
        busy(&core, 1, waiting: 500, answer: 0.05)
        XCTAssertTrue(describe(arrive(&core, "c", to: mail))[0].hasPrefix("refuse c overloaded: 500 clients wait"), "25 s to wait is refused at once")
    }

    func testOneSlowAnswerDoesNotRefuseClientsTheSessionIsServingFast() {
        // Found in the bench: with sessions = 1 1, one slow open lifted the answer time so
        // that 63 clients of a burst served in 6 s were refused as "overloaded".
        var core = core(sessions: 1, most: 1)
        _ = arrive(&core, "a", to: mail)
        up(&core, 1, load: 1)
        for step in 1...10 {
            busy(&core, 1, waiting: 1700, answer: 0.001, answered: step * 50)
            clock.advance(0.1)
        }
        // 500 answered in the last second, then one slow answer: 1,700 x 8 ms looks like 13.6 s.
        busy(&core, 1, waiting: 1700, answer: 0.008, answered: 501)
        XCTAssertEqual(describe(arrive(&core, "b", to: mail)), ["hand b 1"], "1,700 at 500/s is 3.4 s: within connect_timeout")
        XCTAssertEqual(core.overloadRefusals, 0)
    }

    func testTheOpenRateCountsTheLastSecond() {
        var core = core(sessions: 1)
        _ = arrive(&core, "a", to: mail)
        up(&core, 1, load: 1)
        for step in 1...10 {
            busy(&core, 1, waiting: 5, answer: 0.001, answered: step * 100)
            clock.advance(0.1)
        }
        XCTAssertEqual(core.opensPerSecond(at: clock.now), 900, "the first report's 100 are over a second old")
        XCTAssertEqual(core.waitingForChannel, 5)
        XCTAssertEqual(core.nextClientWait(at: clock.now) ?? 0, 0.005, accuracy: 1e-9)
        clock.advance(2)
        XCTAssertEqual(core.opensPerSecond(at: clock.now), 0)
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
            case .burstStarted(let id, _, _): return "burst \(id)"
            }
        }
    }
}
