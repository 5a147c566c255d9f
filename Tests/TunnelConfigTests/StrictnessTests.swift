import Foundation
import XCTest
@testable import TunnelConfig

/// Values that used to be accepted silently, or with the wrong meaning: empty only_from,
/// IPv4-mapped rules, domain rules, unbounded durations, include loops, disabled stanzas, flags.
final class StrictnessTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    private func service(_ extra: String, body: String = minimalBody) -> (Service?, [String]) {
        fixture.write("conf", "service s\n{\n\(body)\n\(extra)\nhost_key = accept-new\n}\n")
        let configuration = fixture.load()
        return (configuration.services.first, fixture.messages(configuration))
    }

    // MARK: only_from and no_access

    func testAnEmptyOnlyFromAdmitsNobodyAndSaysSo() throws {
        let (loaded, messages) = service("bind = *\nonly_from =")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.onlyFrom, [], "an empty list, not no list")
        XCTAssertEqual(messages, ["ROOT/conf:7: warning: s: only_from is empty, so nobody may connect (as in xinetd); list the client addresses, or remove only_from to admit anyone"])
        XCTAssertNil(self.service("").0?.onlyFrom, "no only_from admits anyone")
    }

    func testIPv4MappedRulesAreIPv4Rules() {
        XCTAssertEqual(service("only_from = ::ffff:10.0.0.0/104 ::ffff:192.0.2.1").0?.onlyFrom, [
            .network(address: [10, 0, 0, 0], prefixLength: 8),
            .network(address: [192, 0, 2, 1], prefixLength: 32),
        ])
        XCTAssertEqual(service("no_access = ::ffff:0:0/96").0?.noAccess, [.network(address: [0, 0, 0, 0], prefixLength: 0)])
    }

    func testADomainRuleIsAnErrorNotIgnored() {
        XCTAssertEqual(service("only_from = .example.org").1, ["ROOT/conf:6: error: s: only_from: '.example.org' is xinetd's domain form, which needs a reverse DNS lookup of every client; tunneld does not do that: list the clients' addresses, CIDR blocks or host names"])
    }
}
