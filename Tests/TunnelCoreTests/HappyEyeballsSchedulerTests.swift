import Glibc
import Platform
import TunnelConfig
import XCTest
@testable import TunnelCore

/// The Happy Eyeballs scheduler (RFC 8305) driven by hand: the test says when answers come,
/// when attempts connect or fail and what time it is; no socket, no thread, no sleep.
final class HappyEyeballsSchedulerTests: XCTestCase {
    private let start = ContinuousClock.now
    private let v6a = RaceAddress(host: "2001:db8::1", family: .ipv6)
    private let v6b = RaceAddress(host: "2001:db8::2", family: .ipv6)
    private let v4a = RaceAddress(host: "192.0.2.1", family: .ipv4)
    private let v4b = RaceAddress(host: "192.0.2.2", family: .ipv4)

    private func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    private func race(_ families: [IPFamily] = [.ipv6, .ipv4], timeout: Int = 10_000) -> HappyEyeballs {
        HappyEyeballs(families: families, deadline: at(timeout))
    }

    func testASilentFirstAddressGetsACompanionAt250msWhichWinsAndTheFirstIsClosed() {
        var race = race()
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a], at: at(0)), [.attempt(v6a)], "AAAA in: start at once")
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(1)), [], "the IPv6 attempt has its 250 ms")
        XCTAssertEqual(race.nextWake, at(250))
        XCTAssertEqual(race.tick(at: at(249)), [])
        XCTAssertEqual(race.tick(at: at(250)), [.attempt(v4a)], "no answer from the first after 250 ms: the next starts beside it")
        XCTAssertEqual(race.attemptConnected(v4a, at: at(260)), [.abandon(v6a), .connected(v4a)], "the winner is the connection; the silent one is closed")
        XCTAssertTrue(race.isFinished)
        XCTAssertNil(race.nextWake)
        XCTAssertEqual(race.attemptConnected(v6a, at: at(270)), [], "a late connect after the end changes nothing")
    }

    func testAFailedAttemptStartsTheNextAtOnce() {
        var race = race()
        _ = race.answered(.ipv4, addresses: [v4a], at: at(0))
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a], at: at(10)), [.attempt(v6a)])
        XCTAssertEqual(race.attemptFailed(v6a, reason: "network unreachable", at: at(12)), [.attempt(v4a)], "no need to wait 250 ms after a failure")
    }

    func testWhenEveryAddressFailsOneReasonListsEach() {
        var race = race()
        _ = race.answered(.ipv6, addresses: [v6a], at: at(0))
        _ = race.answered(.ipv4, addresses: [v4a], at: at(0))
        XCTAssertEqual(race.tick(at: at(250)), [.attempt(v4a)])
        XCTAssertEqual(race.attemptFailed(v4a, reason: "refused", at: at(251)), [], "the IPv6 attempt is still in flight")
        let actions = race.attemptFailed(v6a, reason: "host unreachable", at: at(3000))
        guard case .failed(let failure)? = actions.last, actions.count == 1 else { return XCTFail("\(actions)") }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"),
                       "cannot connect to mail.test:22: 2001:db8::1 host unreachable; 192.0.2.1 refused")
    }

    func testALateAAAAWaitsTheResolutionDelayThenJoinsInterleaved() {
        var race = race()
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a, v4b], at: at(0)), [], "A first: wait for AAAA")
        XCTAssertEqual(race.nextWake, at(50))
        XCTAssertEqual(race.tick(at: at(49)), [])
        XCTAssertEqual(race.tick(at: at(50)), [.attempt(v4a)], "50 ms after the A answer, AAAA still out: start with IPv4")
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a, v6b], at: at(120)), [], "a late answer joins the race; the pace stays 250 ms")
        XCTAssertEqual(race.tick(at: at(300)), [.attempt(v6a)], "interleaved: IPv6 after IPv4")
        XCTAssertEqual(race.tick(at: at(550)), [.attempt(v4b)])
        XCTAssertEqual(race.tick(at: at(800)), [.attempt(v6b)])
        XCTAssertEqual(race.tick(at: at(1050)), [], "nothing left to start")
    }

    func testAAAAInTimeStartsTheRaceWithIPv6First() {
        var race = race()
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(0)), [])
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a], at: at(30)), [.attempt(v6a)], "AAAA within the resolution delay: IPv6 first")
        XCTAssertEqual(race.tick(at: at(280)), [.attempt(v4a)])
    }

    func testAFailedAAAALookupStartsIPv4AtOnce() {
        var race = race()
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(0)), [])
        XCTAssertEqual(race.lookupFailed(.ipv6, reason: "no address", at: at(5)), [.attempt(v4a)])
    }

    func testTheFamilyCacheOrdersTheFirstAttemptAndForgetClearsIt() {
        let cache = FamilyCache(localAddresses: { ["198.51.100.2"] })
        let server = Endpoint(host: "mail.test", port: 22)
        let racer = ConnectionRacer(server: server, addressFamily: .any, cache: cache)
        XCTAssertEqual(racer.families, [.ipv6, .ipv4], "nothing known: IPv6 first")
        cache.remember(v4a, from: "198.51.100.2", for: server)
        XCTAssertEqual(racer.families, [.ipv4, .ipv6], "IPv4 worked last: IPv4 first")
        XCTAssertEqual(cache.lastAddress(for: server), v4a)
        XCTAssertEqual(ConnectionRacer(server: Endpoint(host: "other.test", port: 22), addressFamily: .any, cache: cache).families, [.ipv6, .ipv4], "per server")

        // With IPv4 preferred, an early AAAA waits for A, and A goes first.
        var race = race(racer.families)
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a], at: at(0)), [])
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(2)), [.attempt(v4a)])
        XCTAssertEqual(race.tick(at: at(252)), [.attempt(v6a)])

        cache.forget()
        XCTAssertEqual(racer.families, [.ipv6, .ipv4], "after a network change: IPv6 first again")
        XCTAssertNil(cache.lastAddress(for: server))
    }

    func testAnEntryFromALocalAddressThatIsGoneIsForgotten() {
        let addresses = Locked<Set<String>>(["198.51.100.2"])
        let cache = FamilyCache(localAddresses: { addresses.withLock { $0 } })
        let server = Endpoint(host: "mail.test", port: 22)
        cache.remember(v4a, from: "198.51.100.2", for: server)
        XCTAssertEqual(cache.preferredFamily(for: server), .ipv4)
        addresses.withLock { $0 = ["198.51.100.3"] }
        XCTAssertNil(cache.preferredFamily(for: server), "the laptop roamed: what worked there says nothing here")
        addresses.withLock { $0 = ["198.51.100.2"] }
        XCTAssertNil(cache.preferredFamily(for: server), "and it stays forgotten")
    }

    func testTheDeadlineBoundsTheWholeRaceLookupsIncluded() {
        var race = race(timeout: 3000)
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(0)), [])
        XCTAssertEqual(race.tick(at: at(50)), [.attempt(v4a)])
        XCTAssertEqual(race.nextWake, at(3000), "nothing else to start: wake at the deadline")
        let actions = race.tick(at: at(3000))
        XCTAssertEqual(actions.first, .abandon(v4a))
        guard case .failed(let failure)? = actions.last else { return XCTFail("\(actions)") }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"),
                       "cannot connect to mail.test:22: 192.0.2.1 timed out; no IPv6 address: the resolver did not answer within connect_timeout")

        var silent = self.race(timeout: 3000)
        XCTAssertEqual(silent.nextWake, at(3000))
        guard case .failed(let unresolved)? = silent.tick(at: at(3000)).last else { return XCTFail() }
        XCTAssertEqual(unresolved.sentence(host: "mail.test", server: "mail.test:22"),
                       "cannot resolve mail.test: the resolver did not answer within connect_timeout")
    }

    func testAddressesLeftWhenTimeRunsOutAreCounted() {
        var race = race(timeout: 400)
        _ = race.answered(.ipv6, addresses: [v6a, v6b], at: at(0))
        _ = race.answered(.ipv4, addresses: [v4a], at: at(0))
        _ = race.tick(at: at(250))
        guard case .failed(let failure)? = race.tick(at: at(400)).last else { return XCTFail() }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"),
                       "cannot connect to mail.test:22: 2001:db8::1 timed out; 192.0.2.1 timed out; 1 more not tried within connect_timeout")
    }

    func testAFamilyWithoutAddressesIsNotNewsWhenTheOtherFails() {
        var race = race()
        _ = race.lookupFailed(.ipv6, reason: "No address associated with hostname", at: at(0))
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a], at: at(1)), [.attempt(v4a)])
        guard case .failed(let failure)? = race.attemptFailed(v4a, reason: "refused", at: at(2)).last else { return XCTFail() }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"), "cannot connect to mail.test:22: 192.0.2.1 refused")
    }

    func testLookupsFailingDifferentlyAreEachNamed() {
        var race = race(timeout: 100)
        _ = race.lookupFailed(.ipv4, reason: "Name or service not known", at: at(0))
        guard case .failed(let failure)? = race.tick(at: at(100)).last else { return XCTFail() }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"),
                       "cannot resolve mail.test: IPv6: the resolver did not answer within connect_timeout; IPv4: Name or service not known")
    }

    func testStuckLookupsAreBounded() throws {
        let mailbox = try LookupMailbox()
        let before = AddressLookup.pending.withLock { count -> Int in
            defer { count = AddressLookup.maxPending }
            return count
        }
        defer { AddressLookup.pending.withLock { $0 -= AddressLookup.maxPending - before } }
        XCTAssertEqual(AddressLookup.start(host: "mail.test", family: .ipv4, into: mailbox),
                       "\(AddressLookup.maxPending) earlier lookups are still waiting for the resolver")
        XCTAssertTrue(mailbox.take().isEmpty, "no thread was started")
    }

    func testALookupAnswersThroughTheMailbox() throws {
        let mailbox = try LookupMailbox()
        XCTAssertNil(AddressLookup.start(host: "127.0.0.1", family: .ipv4, into: mailbox))
        var descriptor = pollfd(fd: mailbox.descriptor, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&descriptor, 1, 5000), 1, "the answer wakes the poller")
        let answers = mailbox.take()
        XCTAssertEqual(answers.count, 1)
        XCTAssertEqual(try answers.first?.result.get(), [RaceAddress(host: "127.0.0.1", family: .ipv4)])
    }

    func testBothLookupsFailingSayCannotResolve() {
        var race = race()
        XCTAssertEqual(race.lookupFailed(.ipv6, reason: "Name or service not known", at: at(0)), [])
        guard case .failed(let failure)? = race.lookupFailed(.ipv4, reason: "Name or service not known", at: at(1)).last else { return XCTFail() }
        XCTAssertEqual(failure.sentence(host: "mail.test", server: "mail.test:22"), "cannot resolve mail.test: Name or service not known")
    }

    func testARestrictedRaceUsesOneFamilyOnly() {
        XCTAssertEqual(ConnectionRacer(server: Endpoint(host: "mail.test", port: 22), addressFamily: .ipv4, cache: FamilyCache()).families, [.ipv4])
        let cache = FamilyCache()
        cache.remember(v4a, from: nil, for: Endpoint(host: "mail.test", port: 22))
        XCTAssertEqual(ConnectionRacer(server: Endpoint(host: "mail.test", port: 22), addressFamily: .ipv6, cache: cache).families, [.ipv6], "the cache never widens a restriction")

        var race = race([.ipv4])
        XCTAssertEqual(race.answered(.ipv6, addresses: [v6a], at: at(0)), [], "an answer for a family not in the race is ignored")
        XCTAssertEqual(race.answered(.ipv4, addresses: [v4a, v4b], at: at(1)), [.attempt(v4a)], "no resolution delay: no other family to wait for")
        XCTAssertEqual(race.tick(at: at(251)), [.attempt(v4b)])
    }

    func testALiteralOfAFamilyRuledOutIsRefusedWithoutAnyAttempt() throws {
        let racer = ConnectionRacer(server: Endpoint(host: "2001:db8::1", port: 22), addressFamily: .ipv4, cache: FamilyCache())
        XCTAssertThrowsError(try racer.connect(by: .now + .seconds(1))) { error in
            guard case .noConnection(let failure) = error as? ConnectionRacer.Failure else { return XCTFail("\(error)") }
            XCTAssertEqual(failure.sentence(host: "2001:db8::1", server: "[2001:db8::1]:22"), "cannot resolve 2001:db8::1: it is an IPv6 address, and only IPv4 is allowed (flags, AddressFamily)")
        }
    }
}
