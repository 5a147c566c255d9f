import XCTest
@testable import TunnelConfig

/// `permit` patterns mean what they say (issue 22): an address pattern matches address
/// literals only, a name pattern names only, so a name the attacker's DNS controls never
/// passes a rule written for addresses.
final class PermitTests: XCTestCase {
    private func rule(_ text: String) -> PermitRule {
        PermitRule(text)!
    }

    func testANameThatStartsLikeAnAddressDoesNotPassAnAddressPattern() {
        let addresses = rule("10.9.8.*:7002")
        XCTAssertTrue(addresses.allows(host: "10.9.8.7", port: 7002))
        XCTAssertFalse(addresses.allows(host: "10.9.8.7.attacker.example", port: 7002))
        XCTAssertFalse(addresses.allows(host: "10.9.8.7", port: 7003))
        XCTAssertFalse(rule("10.9.8.7:*").allows(host: "10.9.8.7.", port: 1), "a name with a final dot is a name")
    }

    func testCIDRBlocks() {
        let block = rule("10.9.8.0/24:*")
        XCTAssertEqual(block.kind, .network(address: [10, 9, 8, 0], prefixLength: 24))
        XCTAssertTrue(block.allows(host: "10.9.8.200", port: 22))
        XCTAssertFalse(block.allows(host: "10.9.9.1", port: 22))
        XCTAssertFalse(block.allows(host: "10.9.8.1.attacker.example", port: 22))
        let v6 = rule("[2001:db8::/32]:443")
        XCTAssertTrue(v6.allows(host: "2001:db8:ffff::1", port: 443))
        XCTAssertTrue(v6.allows(host: "2001:0DB8:0::1", port: 443), "any spelling of the address")
        XCTAssertFalse(v6.allows(host: "2001:db9::1", port: 443))
        XCTAssertNil(PermitRule("10.9.8.0/33:*"))
        XCTAssertNil(PermitRule("mail.example.org/24:*"))
    }

    func testIPv6PatternsMatchTheCanonicalForm() {
        let pattern = rule("[2001:db8::*]:*")
        XCTAssertTrue(pattern.allows(host: "2001:db8::1", port: 1))
        XCTAssertTrue(pattern.allows(host: "2001:0db8:0000::0001", port: 1))
        XCTAssertFalse(pattern.allows(host: "2001:db8::1.example", port: 1))
    }

    func testANamePatternMatchesNamesOnly() {
        let names = rule("*.example.org:443")
        XCTAssertTrue(names.allows(host: "www.example.org", port: 443))
        XCTAssertTrue(names.allows(host: "WWW.Example.ORG", port: 443))
        XCTAssertFalse(names.allows(host: "example.org", port: 443))
        XCTAssertFalse(rule("localhost*:*").allows(host: "127.0.0.1", port: 1), "a name pattern is no address")
        XCTAssertTrue(rule("*:*").allows(host: "198.51.100.1", port: 9), "* alone matches any host")
        XCTAssertTrue(rule("*:*").allows(host: "any.example", port: 9))
        XCTAssertNil(PermitRule("ex ample.org:1"), "no host has a space")
    }

    func testCheckWarnsAboutAPatternThatMixesAddressAndName() {
        XCTAssertTrue(rule("10.9.8.*.example.org:1").mixesAddressAndName)
        XCTAssertFalse(rule("10.9.8.*:1").mixesAddressAndName)
        XCTAssertFalse(rule("mail2.example.org:25").mixesAddressAndName)
        let fixture = ConfigFixture()
        fixture.write("conf", "service s\n{\n    type = SOCKS\n    port = 1080\n    server = h.example.org\n    host_key = accept-new\n    permit = 10.9.8.*.example.org:* 10.9.8.0/24:*\n}\n")
        let messages = fixture.messages(fixture.load())
        XCTAssertEqual(messages.count, 1, "\(messages)")
        XCTAssertTrue(messages.first?.contains("warning: s: permit '10.9.8.*.example.org:*' is a name pattern that looks like an address") == true, "\(messages)")
    }
}
