import Foundation
import TunnelConfig
import XCTest
@testable import TunnelCore

final class AccessControlTests: XCTestCase {
    private func rules(only: [String]? = nil, deny: [String] = [], resolver: HostResolver = .shared) -> AccessControl {
        func parse(_ text: String) -> AddressMatch {
            let parts = text.split(separator: "/")
            if let bytes = AccessControl.bytes(of: String(parts[0])) {
                return .network(address: bytes, prefixLength: parts.count == 2 ? Int(parts[1])! : bytes.count * 8)
            }
            return .hostname(text)
        }
        let service = Service(
            name: "s", location: SourceLocation(file: "f", line: 1), listening: Listening(address: Endpoint(host: "127.0.0.1", port: 1)),
            route: Route(server: Endpoint(host: "h", port: 22), user: "u"), forwarding: Forwarding(target: Endpoint(host: "t", port: 1)),
            access: AccessRules(onlyFrom: only?.map(parse), noAccess: deny.map(parse)))
        return AccessControl(service: service, resolver: resolver)
    }

    func testNoRulesLetsAnyoneIn() {
        XCTAssertNil(rules().refusal(for: "192.0.2.7"))
    }

    func testAnEmptyOnlyFromAdmitsNobody() {
        XCTAssertEqual(rules(only: []).refusal(for: "127.0.0.1"), "not in only_from", "xinetd: only_from with no value admits nobody")
        XCTAssertEqual(rules(only: []).refusal(for: "::1"), "not in only_from")
        XCTAssertEqual(rules(only: [], deny: ["10.0.0.0/8"]).refusal(for: "192.0.2.1"), "not in only_from")
    }

    func testOnlyFromAdmitsItsBlocksOnly() {
        let access = rules(only: ["10.0.0.0/8", "2001:db8::/32"])
        XCTAssertNil(access.refusal(for: "10.1.2.3"))
        XCTAssertNil(access.refusal(for: "::ffff:10.1.2.3"), "IPv4-mapped addresses are IPv4")
        XCTAssertNil(access.refusal(for: "2001:db8::42"))
        XCTAssertEqual(access.refusal(for: "192.0.2.1"), "not in only_from")
        XCTAssertEqual(access.refusal(for: "2001:db9::1"), "not in only_from")
    }

    func testTheMoreSpecificMatchWins() {
        let access = rules(only: ["10.0.0.0/8", "10.1.2.3"], deny: ["10.1.0.0/16"])
        XCTAssertNil(access.refusal(for: "10.2.0.1"))
        XCTAssertEqual(access.refusal(for: "10.1.9.9"), "no_access 10.1.0.0/16")
        XCTAssertNil(access.refusal(for: "10.1.2.3"), "a single address is more specific than its block")
        XCTAssertEqual(rules(only: ["10.0.0.0/8"], deny: ["10.0.0.0/8"]).refusal(for: "10.0.0.1"), "no_access 10.0.0.0/8", "a tie refuses")
        XCTAssertEqual(rules(deny: ["127.0.0.1"]).refusal(for: "127.0.0.1"), "no_access 127.0.0.1")
    }

    func testHostNamesMatchTheirAddresses() {
        XCTAssertEqual(HostResolver.shared.waitForAnswer("localhost", timeout: .seconds(5)), .addresses(HostResolver.lookUp("localhost")!))
        XCTAssertNil(rules(only: ["localhost"]).refusal(for: "127.0.0.1"))
        XCTAssertEqual(rules(only: ["localhost"]).refusal(for: "192.0.2.1"), "not in only_from")
    }

    func testHostNamesAreResolvedOffTheAcceptPathAndAnUnknownNameFailsClosed() {
        let release = DispatchSemaphore(value: 0)
        let resolver = HostResolver { name in
            // A DNS server that takes its time, then fails for one name.
            release.wait()
            return name == "gone.example" ? nil : [[192, 0, 2, 9]]
        }
        let started = ContinuousClock.now
        XCTAssertEqual(rules(deny: ["bad.example"], resolver: resolver).refusal(for: "192.0.2.1"), "no_access bad.example",
                       "a no_access name not resolved yet refuses: it fails closed")
        XCTAssertEqual(rules(only: ["good.example"], resolver: resolver).refusal(for: "192.0.2.9"), "not in only_from",
                       "an only_from name not resolved yet admits nobody")
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(500), "a slow lookup never holds the caller")
        release.signal()
        release.signal()
        XCTAssertEqual(resolver.waitForAnswer("bad.example", timeout: .seconds(5)), .addresses([[192, 0, 2, 9]]))
        XCTAssertEqual(resolver.waitForAnswer("good.example", timeout: .seconds(5)), .addresses([[192, 0, 2, 9]]))
        XCTAssertNil(rules(deny: ["bad.example"], resolver: resolver).refusal(for: "192.0.2.1"), "resolved: only its address is refused")
        XCTAssertEqual(rules(deny: ["bad.example"], resolver: resolver).refusal(for: "192.0.2.9"), "no_access bad.example")
        XCTAssertNil(rules(only: ["good.example"], resolver: resolver).refusal(for: "192.0.2.9"))
        _ = resolver.answer(for: "gone.example")
        release.signal()
        XCTAssertEqual(resolver.waitForAnswer("gone.example", timeout: .seconds(5)), .unknown)
        XCTAssertEqual(rules(deny: ["gone.example"], resolver: resolver).refusal(for: "192.0.2.1"), "no_access gone.example",
                       "a failed lookup of a no_access name still refuses")
    }
}

final class ConnectionLimitsTests: XCTestCase {
    private func limits(instances: Int? = nil, perSource: Int? = nil, cps: ConnectionRate? = nil) -> ConnectionLimits {
        ConnectionLimits(service: Service(
            name: "s", location: SourceLocation(file: "f", line: 1), listening: Listening(address: Endpoint(host: "127.0.0.1", port: 1)),
            route: Route(server: Endpoint(host: "h", port: 22), user: "u"), forwarding: Forwarding(target: Endpoint(host: "t", port: 1)),
            limits: Limits(instances: instances, perSource: perSource, cps: cps)))
    }

    func testInstancesCountsLiveConnections() {
        let limits = limits(instances: 2)
        XCTAssertNil(limits.admit(source: "a"))
        XCTAssertNil(limits.admit(source: "b"))
        XCTAssertEqual(limits.admit(source: "c"), .instances)
        limits.release(source: "a")
        XCTAssertNil(limits.admit(source: "c"))
    }

    func testPerSourceCountsEachAddress() {
        let limits = limits(perSource: 1)
        XCTAssertNil(limits.admit(source: "a"))
        XCTAssertEqual(limits.admit(source: "a"), .perSource)
        XCTAssertNil(limits.admit(source: "b"))
        limits.release(source: "a")
        XCTAssertNil(limits.admit(source: "a"))
    }

    func testCPSPausesTheServiceThenResumes() {
        let limits = limits(cps: ConnectionRate(rate: 2, pause: 5))
        let start = ContinuousClock.now
        XCTAssertNil(limits.admit(source: "a", now: start))
        XCTAssertNil(limits.admit(source: "a", now: start + .milliseconds(100)))
        XCTAssertEqual(limits.admit(source: "a", now: start + .milliseconds(200)), .cps)
        XCTAssertNotNil(limits.pause(at: start + .seconds(3)))
        XCTAssertNil(limits.pause(at: start + .seconds(6)))
        XCTAssertNil(limits.admit(source: "a", now: start + .seconds(6)))
    }
}

final class MetricsAccessTests: XCTestCase {
    func testMetricsAreForLoopbackUnlessOnlyFromOfDefaultsAdmitsMore() {
        XCTAssertTrue(MetricsListener.admits("127.0.0.1", allowed: []))
        XCTAssertTrue(MetricsListener.admits("::1", allowed: []))
        XCTAssertTrue(MetricsListener.admits("::ffff:127.0.0.5", allowed: []))
        XCTAssertFalse(MetricsListener.admits("192.0.2.5", allowed: []), "not loopback, no only_from")
        XCTAssertTrue(MetricsListener.admits("192.0.2.5", allowed: [.network(address: [192, 0, 2, 0], prefixLength: 24)]))
        XCTAssertFalse(MetricsListener.admits("198.51.100.1", allowed: [.network(address: [192, 0, 2, 0], prefixLength: 24)]))
    }
}
