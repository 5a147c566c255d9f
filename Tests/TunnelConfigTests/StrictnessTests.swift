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

    // MARK: Bounds

    func testDurationsAndCountsHaveUpperBounds() {
        XCTAssertEqual(service("keepalive = 8760h 1000").1, ["ROOT/conf:6: error: s: keepalive interval '8760h' is more than 1 hour; use at most 1h"])
        XCTAssertEqual(service("keepalive = 15 101").1, ["ROOT/conf:6: error: s: keepalive count '101' is not a number from 1 to 100"])
        XCTAssertEqual(service("keepalive = 1h 100").0?.keepalive, Keepalive(interval: 3600, count: 100))
        XCTAssertEqual(service("linger = 86401").1, ["ROOT/conf:6: error: s: linger: '86401' is more than 1 day; use at most 24h"])
        XCTAssertEqual(service("linger = 24h").0?.linger, 86_400)
        XCTAssertEqual(service("connect_timeout = 11m").1, ["ROOT/conf:6: error: s: connect_timeout: '11m' is more than 10 minutes; use at most 10m"])
        XCTAssertEqual(service("cps = 50 2d").1, ["ROOT/conf:6: error: s: cps '50 2d' is not RATE SECONDS, e.g. cps = 50 10"])
        XCTAssertEqual(service("cps = 50 25h").1, ["ROOT/conf:6: error: s: cps pause '25h' is more than 1 day; use at most 24h"])
        XCTAssertEqual(service("cps = 10000001 10").1, ["ROOT/conf:6: error: s: cps rate '10000001' is not a number from 1 to 1000000"])
        fixture.write("conf", "defaults { shutdown_timeout = 2h }\n")
        XCTAssertEqual(fixture.messages(fixture.load()), ["ROOT/conf:1: error: shutdown_timeout: '2h' is more than 1 hour; use at most 1h"])
    }

    // MARK: Includes

    func testIncludedirDotAndLoopsAreFoundWithoutExploringEveryPath() {
        for index in 0..<8 {
            fixture.write("conf/\(index)", "includedir .\ninclude \((index + 1) % 8)\n")
        }
        let started = Date()
        let configuration = fixture.load()
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "not explored combinatorially")
        let messages = fixture.messages(configuration)
        XCTAssertTrue(messages.contains("ROOT/conf/0:1: error: includedir . includes ROOT/conf, which is already being read (a loop); remove the includedir"), "\(messages)")
        XCTAssertLessThanOrEqual(messages.count, 16, "one message per include line at most: \(messages)")
    }

    func testAFileIncludedTwiceIsReadOnce() {
        fixture.write("main", "include a\ninclude a\n")
        fixture.write("a", "service a { port = 1 server = h server_args = localhost 25 host_key = accept-new }\n")
        let configuration = fixture.load("main")
        XCTAssertEqual(configuration.services.map(\.name), ["a"])
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/main:2: warning: ROOT/a was already read; included once only"])
    }

    func testAnIncludedFileThatIsNotAConfigurationIsNotQuoted() {
        let secret = "root:$6$saltsalt$c2VjcmV0aGFzaA:19000:0:99999:7:::"
        fixture.write("shadow", "\(secret)\ndaemon:*:19000:0:99999:7:::\n", mode: 0o600)
        fixture.write("main", "include shadow\n")
        let configuration = fixture.load("main")
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/shadow:1: error: ROOT/shadow is not a configuration file (it does not start with service, defaults, include or includedir); its content is not shown"])
        let report = CheckReport(configuration).render()
        XCTAssertFalse(report.contains("$6$"), report)
        XCTAssertFalse(report.contains("daemon"), report)
        fixture.write("passphrase", "hunter2\n", mode: 0o600)
        fixture.write("main", "include passphrase\n")
        XCTAssertFalse(CheckReport(fixture.load("main")).render().contains("hunter2"))
    }

    // MARK: disable = yes

    func testADisabledStanzaIsCheckedForSyntaxOnly() {
        fixture.write("conf/off", "service off\n{\n    port = 1\n    server = h\n    server_args = localhost 25\n    identity = /nonexistent/key\n    keepalive = soon\n    disable = yes\n}\n")
        fixture.write("conf/on", "service on\n{\n    port = 2\n    server = h\n    server_args = localhost 25\n    host_key = accept-new\n}\n")
        let configuration = fixture.load()
        XCTAssertEqual(fixture.messages(configuration), [])
        XCTAssertFalse(configuration.hasErrors)
        XCTAssertEqual(configuration.disabledServices.map(\.name), ["off"])
        XCTAssertEqual(configuration.services.map(\.name), ["on"])

        fixture.write("conf/off", "service off\n{\n    port = 1\n    identity = /nonexistent/key\n    disable = yes\n    server_args += x\n}\n")
        XCTAssertEqual(fixture.messages(fixture.load()), ["ROOT/conf/off:6: error: off: server_args takes one value; use = instead of +="], "grammar errors still count")
        fixture.write("conf/off", "service off\n{\n    port = 1\n    server = h\n    server_args = localhost 25\n    host_key = accept-new\n    disable = perhaps\n}\n")
        XCTAssertEqual(fixture.messages(fixture.load()), ["ROOT/conf/off:7: error: off: disable: 'perhaps' is not yes or no"])
    }

    // MARK: flags

    func testAddressFamilyFlagsAreNotIgnored() {
        XCTAssertEqual(service("flags = REUSE IPv6\nbind = 127.0.0.1").1, ["ROOT/conf:6: warning: s: flags IPv6 makes tunneld reach the SSH server over IPv6 only, but it listens on bind's address (127.0.0.1, IPv4); set bind = ::1 (or ::) to listen on IPv6"])
        XCTAssertEqual(service("flags = IPv6\nbind = ::1").1, [])
        XCTAssertEqual(service("flags = IPv4\nbind = ::1").1, ["ROOT/conf:6: warning: s: flags IPv4 makes tunneld reach the SSH server over IPv4 only, but it listens on bind's address (::1, IPv6); set bind = 127.0.0.1 (or *) to listen on IPv4"])
        XCTAssertEqual(service("flags = IPv4").1, [])
    }

    func testAddressFamilyFlagsRestrictTheConnectionToTheServer() throws {
        XCTAssertEqual(try XCTUnwrap(service("").0).addressFamily, .any, "no flag: IPv6 and IPv4 raced")
        XCTAssertEqual(try XCTUnwrap(service("flags = REUSE IPv4").0).addressFamily, .ipv4)
        XCTAssertEqual(try XCTUnwrap(service("flags = IPv6").0).addressFamily, .ipv6)
        XCTAssertEqual(try XCTUnwrap(service("flags = IPv4 IPv6").0).addressFamily, .any, "both flags: both families")
        XCTAssertNotEqual(service("flags = IPv4").0?.sessionKey, service("flags = IPv6").0?.sessionKey, "the restriction is part of the session key")
        XCTAssertEqual(service("flags = IPv4", body: "port = 7777\nserver = [2001:db8::5]:22\nserver_args = localhost 25").1,
                       ["ROOT/conf:4: error: s: server 2001:db8::5 is an IPv6 address, but flags IPv4 allows IPv4 only; remove the flag or name the server by an address of that family"])
    }

    func testLocalhostMeansBothLoopbacksAndTheFamilyFlagsChooseOne() throws {
        let both = try XCTUnwrap(service("").0)
        XCTAssertEqual(both.listenAddresses.map(\.host), ["127.0.0.1", "::1"], "clients that resolve localhost to ::1 first are served")
        XCTAssertEqual(try XCTUnwrap(service("bind = localhost").0).listenAddresses.map(\.host), ["127.0.0.1", "::1"])
        XCTAssertEqual(try XCTUnwrap(service("flags = IPv4").0).listenAddresses.map(\.host), ["127.0.0.1"])
        XCTAssertEqual(try XCTUnwrap(service("flags = IPv6").0).listenAddresses.map(\.host), ["::1"])
        XCTAssertEqual(try XCTUnwrap(service("bind = 127.0.0.1").0).listenAddresses.map(\.host), ["127.0.0.1"], "an address means that address")
        XCTAssertEqual(try XCTUnwrap(service("bind = ::1").0).listenAddresses.map(\.host), ["::1"])
    }

    func testNameInArgsTakesTheProgramNameFromServerArgs() throws {
        let (loaded, messages) = service("", body: """
            port        = 2525
            flags       = REUSE NAMEINARGS
            server      = /usr/bin/ssh
            server_args = ssh -q relay@mail.example.org nc localhost 25
            host_key    = accept-new
            """)
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "mail.example.org", port: 22))
        XCTAssertEqual(service.user, "relay")
        XCTAssertEqual(service.target, Endpoint(host: "localhost", port: 25))
        XCTAssertEqual(messages, [])
        XCTAssertEqual(self.service("flags = NAMEINARGS").1, ["ROOT/conf:6: error: s: flags NAMEINARGS means server_args starts with the program name, which only the command form (server = /usr/bin/ssh) has; remove NAMEINARGS"])
    }

    // MARK: --check output

    func testCheckOutputShowsControlCharactersEscaped() {
        fixture.write("conf/s\u{1b}]0;title\u{7}", "service s\u{1b}[31m\n{\n    port = 7\u{1b}[2J\n    server = h\n    server_args = localhost 25\n}\n")
        let report = CheckReport(fixture.load()).render()
        XCTAssertEqual(report.unicodeScalars.filter { $0 != "\n" && ControlCharacters.isControl($0) }.count, 0, report.debugDescription)
        XCTAssertTrue(report.contains("port: unknown port '7\\x1b[2J'"), report)
        XCTAssertTrue(report.contains("conf/s\\x1b]0;title\\x07:3"), report)
    }
}
