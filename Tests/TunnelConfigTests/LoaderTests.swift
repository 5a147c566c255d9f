import Foundation
import XCTest
@testable import TunnelConfig

/// Files, directories, includes, defaults, and problems across services.
final class LoaderTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    private func stanza(_ name: String, port: Int, extra: String = "") -> String {
        "service \(name)\n{\n    port = \(port)\n    server = h.example.org\n    server_args = localhost 25\n    host_key = accept-new\n\(extra)}\n"
    }

    func testADirectoryIsReadInNameOrderSkippingBackups() {
        fixture.write("conf/20-b", stanza("b", port: 2))
        fixture.write("conf/10-a", stanza("a", port: 1))
        fixture.write("conf/10-a~", stanza("editor", port: 3))
        fixture.write("conf/.hidden", stanza("hidden", port: 4))
        fixture.write("conf/c.bak", stanza("bak", port: 5))
        fixture.write("conf/d.dpkg-old", stanza("dpkg", port: 6))
        fixture.write("conf/e.rpmnew", stanza("rpm", port: 7))
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["a", "b"])
        XCTAssertEqual(configuration.skippedFiles.map { ($0 as NSString).lastPathComponent }, [".hidden", "10-a~", "c.bak", "d.dpkg-old", "e.rpmnew"])
        XCTAssertFalse(configuration.hasErrors)
    }

    func testOneBrokenStanzaDisablesOnlyItself() {
        fixture.write("conf/good", stanza("good", port: 1))
        fixture.write("conf/broken", "service broken\n{\n    port = 99999\n    server = h\n    server_args = localhost 25\n}\n")
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["good"])
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/conf/broken:3: error: broken: port: port 99999 is out of range; use 1–65535"])
        let report = CheckReport(configuration).render()
        XCTAssertTrue(report.contains("good     127.0.0.1:1"), report)
        XCTAssertTrue(report.hasSuffix("1 error, 0 warnings: services with errors will not run\n"), report)
    }

    func testDefaultsApplyToEveryServiceAndServicesOverrideThem() throws {
        fixture.write("conf/00-defaults", "defaults\n{\n    linger = 5\n    only_from = 127.0.0.1\n    shutdown_timeout = 3\n    log_level = debug\n}\n")
        fixture.write("conf/a", stanza("a", port: 1, extra: "    only_from += 10.0.0.0/8\n"))
        fixture.write("conf/b", stanza("b", port: 2, extra: "    linger = 9\n"))
        let configuration = fixture.load()
        XCTAssertEqual(fixture.messages(configuration), [])
        XCTAssertEqual(configuration.services.map(\.linger), [5, 9])
        XCTAssertEqual(configuration.services[0].onlyFrom?.count, 2)
        XCTAssertEqual(configuration.globals.shutdownTimeout, 3)
        XCTAssertEqual(configuration.globals.logLevel, "debug")
    }

    func testGlobalSettingsBelongInDefaults() {
        fixture.write("conf/a", stanza("a", port: 1, extra: "    run_as = root\n"))
        fixture.write("conf/d", "defaults { run_as = nosuchuser }")
        let messages = fixture.messages(fixture.load())
        XCTAssertEqual(messages, [
            "ROOT/conf/d:1: error: run_as nosuchuser is not an account on this machine; create it (adduser --system --group nosuchuser) or fix the name",
            "ROOT/conf/a:7: warning: a: run_as applies to the whole daemon; move it into defaults { }",
        ])
    }

    func testRunAsResolvesHomeAndDefaultFilesAgainstThatAccount() throws {
        fixture.write("conf/d", "defaults { run_as = mailer }")
        fixture.write("mailer-home/.ssh/passphrase", "secret\n", mode: 0o600)
        fixture.write("conf/a", "service a\n{\n    port = 7777\n    server = mail.example.org\n    server_args = localhost 25\n    identity_passphrase_file = ~/.ssh/passphrase\n    host_key = accept-new\n}\n")
        let configuration = fixture.load()
        let service = try XCTUnwrap(configuration.services.first, "\(fixture.messages(configuration))")
        let home = fixture.root + "/mailer-home"
        XCTAssertEqual(service.identities, ["\(home)/.ssh/id_ed25519", "\(home)/.ssh/id_ecdsa"], "not the identities of the account that starts tunneld")
        XCTAssertEqual(service.knownHosts, ["\(home)/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"])
        XCTAssertEqual(service.identityPassphraseFile, "\(home)/.ssh/passphrase", "~ is run_as's home")
        XCTAssertEqual(service.user, "mailer", "the login name defaults to run_as's")
        XCTAssertNil(service.identityAgent, "root's agent is not run_as's")
        let report = CheckReport(configuration).render()
        XCTAssertTrue(report.contains("keys and known_hosts are read as mailer (run_as):"), report)
        XCTAssertTrue(report.contains("a: identity \(home)/.ssh/id_ed25519 \(home)/.ssh/id_ecdsa; known_hosts \(home)/.ssh/known_hosts /etc/ssh/ssh_known_hosts"), report)
    }

    func testDuplicateNamesAndSharedPortsAreErrors() {
        fixture.write("conf/a", stanza("a", port: 1) + stanza("a", port: 2) + stanza("c", port: 1))
        let configuration = fixture.load()
        XCTAssertEqual(fixture.messages(configuration), [
            "ROOT/conf/a:8: error: a: a service named a is already defined at ROOT/conf/a:1; rename one of them",
            "ROOT/conf/a:15: error: c: listens on 127.0.0.1:1 like service a; give one of them another port",
        ])
        XCTAssertEqual(configuration.services.map(\.name), ["a"])
    }

    func testIncludesFollowRelativePathsAndCatchLoops() {
        fixture.write("main.conf", "include sub/one.conf\nincludedir more\n")
        fixture.write("sub/one.conf", stanza("one", port: 1) + "include ../main.conf\n")
        fixture.write("more/two", stanza("two", port: 2))
        let configuration = fixture.load("main.conf")
        XCTAssertEqual(configuration.services.map(\.name), ["one", "two"])
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/sub/one.conf:8: error: ROOT/sub/../main.conf includes itself (through ROOT/sub/one.conf); remove the include"])
    }

    func testDeepIncludesStop() {
        for level in 0..<12 {
            fixture.write("deep/\(level)", "include \(level + 1)\n")
        }
        fixture.write("deep/12", stanza("bottom", port: 1))
        let messages = fixture.messages(fixture.load("deep/0"))
        XCTAssertEqual(messages, ["ROOT/deep/8:1: error: includes nest deeper than 8 files at ROOT/deep/9; flatten them"])
    }

    func testCRLFStanzaFilesReadLikeLFFiles() {
        let good = stanza("good", port: 1, extra: "    # a comment\n    linger=5\n    only_from = 127.0.0.1 # trailing comment\n")
        let bad = stanza("bad", port: 2, extra: "    keepalive = 5 x\n")
        fixture.write("conf/good", good.replacingOccurrences(of: "\n", with: "\r\n"))
        fixture.write("conf/bad", bad.replacingOccurrences(of: "\n", with: "\r\n"))
        let configuration = fixture.load()
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/conf/bad:7: error: bad: keepalive count 'x' is not a number from 1 to 100"])
        XCTAssertEqual(configuration.services.map(\.name), ["good"])
        XCTAssertEqual(configuration.services.first?.linger, 5)
        XCTAssertEqual(configuration.services.first?.onlyFrom?.count, 1)
    }

    func testGarbageIsALocatedErrorNeverACrash() {
        fixture.write("binary", "service a {\u{0}\u{1}\u{2} }")
        XCTAssertEqual(fixture.messages(fixture.load("binary")), ["ROOT/binary:1: error: ROOT/binary holds binary data (a NUL byte); is it a configuration file?"])

        let path = fixture.root + "/latin1"
        FileManager.default.createFile(atPath: path, contents: Data([0x73, 0xe9, 0xff, 0x0a]))
        XCTAssertEqual(fixture.messages(fixture.load("latin1")), ["ROOT/latin1:1: error: ROOT/latin1 is not UTF-8 text"])

        fixture.write("huge", String(repeating: "x", count: 2 << 20))
        XCTAssertEqual(fixture.messages(fixture.load("huge")), ["ROOT/huge:1: error: ROOT/huge is larger than 1 MiB; is it a configuration file?"])

        fixture.write("longline", "service a { server_args = " + String(repeating: "y", count: 100_000) + " }\n")
        XCTAssertTrue(fixture.load("longline").hasErrors)

        XCTAssertEqual(fixture.messages(fixture.load("nonexistent")), ["error: ROOT/nonexistent does not exist; give a configuration file or directory"])
    }

    func testAnUnreadableFileIsAnError() throws {
        try XCTSkipIf(getuid() == 0, "root reads every file")
        fixture.write("secret.conf", stanza("a", port: 1), mode: 0o000)
        XCTAssertEqual(fixture.messages(fixture.load("secret.conf")), ["error: cannot read ROOT/secret.conf; check its permissions"])
    }

    func testTheShippedExamplesPass() throws {
        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("services.d").path
        let configuration = ConfigurationLoader(environment: fixture.environment).load(path: examples)
        XCTAssertFalse(configuration.hasErrors, fixture.messages(configuration).joined(separator: "\n"))
        XCTAssertEqual(Set(configuration.services.map(\.name)), ["smtp", "sip2", "intranet-http", "smtp-xinetd"])
        let kiosk = try XCTUnwrap(configuration.services.first { $0.name == "sip2" })
        XCTAssertTrue(kiosk.isPersistent)
        XCTAssertEqual(kiosk.target, Endpoint(host: "carbon", port: 6001))
        XCTAssertEqual(configuration.disabledServices.map(\.name), ["sip2-bastion"], "the bastion example is off in the repository too")
    }

    func testTheShippedBastionExampleRunsOnceEnabled() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("services.d/sip2-via-bastion").path
        let text = try String(contentsOfFile: example, encoding: .utf8)
        XCTAssertTrue(text.contains("    disable         = yes\n"))
        fixture.write("bastion", text.replacingOccurrences(of: "    disable         = yes\n", with: "    disable         = no\n"))
        let configuration = fixture.load("bastion")
        XCTAssertFalse(configuration.hasErrors, fixture.messages(configuration).joined(separator: "\n"))
        let service = try XCTUnwrap(configuration.services.first)
        XCTAssertEqual(service.route.chain, "kiosk@bastion.example.org:22 -> kiosk@carbon:22")
        XCTAssertEqual(service.target, Endpoint(host: "localhost", port: 6001))
    }
}
