import Foundation
import Glibc
import XCTest
@testable import TunnelConfig

/// Configuration, key and password files that another account could write are refused
/// (issue 22): as sshd's StrictModes, the file and every directory above it must be root's
/// (or the reading account's) and writable by no group or other account.
final class TrustTests: XCTestCase {
    private var fixture: ConfigFixture!
    /// An account id with no files of its own on this machine: "another account".
    private let stranger: uid_t = 4242

    override func setUp() {
        fixture = ConfigFixture()
    }

    private func stanza(_ name: String, port: Int, extra: String = "") -> String {
        "service \(name)\n{\n    port = \(port)\n    server = h.example.org\n    server_args = localhost 25\n    host_key = accept-new\n\(extra)}\n"
    }

    private func requireRoot() throws {
        try XCTSkipIf(geteuid() != 0, "only root can give a file to another account")
    }

    func testAnOtherWritableStanzaIsRefusedAndTheGoodOnesStillLoad() {
        fixture.write("conf/10-good", stanza("good", port: 1))
        let open = fixture.write("conf/20-open", stanza("open", port: 2), mode: 0o666)
        fixture.write("conf/30-group", stanza("group", port: 3), mode: 0o664)
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["good"])
        XCTAssertEqual(fixture.messages(configuration), [
            "error: ROOT/conf/20-open: writable by group and others: refused; chmod go-w ROOT/conf/20-open",
            "error: ROOT/conf/30-group: writable by group: refused; chmod go-w ROOT/conf/30-group",
        ])
        XCTAssertTrue(configuration.hasErrors, "--check fails")
        XCTAssertFalse(configuration.hasErrorsBeyondRefusedFiles, "a reload skips the refused files and loads the others")
        chmod(open, 0o644)
        XCTAssertEqual(fixture.load().services.map(\.name), ["good", "open"])
    }

    func testAStanzaOwnedByAnotherAccountIsRefused() throws {
        try requireRoot()
        fixture.write("conf/10-good", stanza("good", port: 1))
        let foreign = fixture.write("conf/20-foreign", stanza("foreign", port: 2))
        XCTAssertEqual(chown(foreign, stranger, stranger), 0)
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["good"])
        XCTAssertEqual(fixture.messages(configuration), ["error: ROOT/conf/20-foreign: owned by uid 4242: refused; chown root ROOT/conf/20-foreign"])
    }

    func testAnOpenDirectoryOnThePathRefusesEverythingInIt() {
        fixture.write("conf/a", stanza("a", port: 1))
        chmod(fixture.root + "/conf", 0o777)
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), [])
        XCTAssertEqual(fixture.messages(configuration), ["error: ROOT/conf: writable by group and others: refused; chmod go-w ROOT/conf"])

        chmod(fixture.root + "/conf", 0o755)
        chmod(fixture.root, 0o775)
        defer { chmod(fixture.root, 0o755) }
        XCTAssertEqual(fixture.messages(fixture.load()), ["error: ROOT: writable by group: refused (it holds ROOT/conf); chmod go-w ROOT"], "a directory above the configuration counts too")
    }

    func testAnIncludedFileIsCheckedLikeTheOthers() throws {
        try requireRoot()
        fixture.write("conf/main", "include ../extra/more\n" + stanza("main", port: 1))
        fixture.write("extra/more", stanza("more", port: 2))
        XCTAssertEqual(chown(fixture.root + "/extra", stranger, stranger), 0)
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["main"])
        XCTAssertEqual(fixture.messages(configuration), ["ROOT/conf/main:1: error: ROOT/extra: owned by uid 4242: refused (it holds ROOT/conf/../extra/more); chown root ROOT/extra"])
    }

    func testASymlinkToAnotherAccountsFileIsRefused() throws {
        try requireRoot()
        let foreign = fixture.write("elsewhere/stanza", stanza("linked", port: 2))
        XCTAssertEqual(chown(foreign, stranger, stranger), 0)
        fixture.write("conf/a", stanza("a", port: 1))
        try FileManager.default.createSymbolicLink(atPath: fixture.root + "/conf/b", withDestinationPath: foreign)
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), ["a"])
        XCTAssertEqual(fixture.messages(configuration), ["error: ROOT/elsewhere/stanza: owned by uid 4242: refused; chown root ROOT/elsewhere/stanza"])
    }

    func testAStickyRootDirectoryLikeTmpIsTrustedAboveTheConfiguration() {
        XCTAssertNil(PathTrust(owners: []).problem(with: "/tmp"), "root's, sticky: others may add names, not replace root's")
        let inTmp = "/tmp/tunneld-trust-\(getpid())"
        mkdir(inTmp, 0o755)
        defer { rmdir(inTmp) }
        XCTAssertNil(PathTrust.current.problem(with: inTmp))
        let open = fixture.root + "/open-sticky"
        mkdir(open, 0o755)
        chmod(open, 0o1777)
        if geteuid() == 0 {
            XCTAssertNil(PathTrust(owners: []).problem(with: open), "a sticky directory of root's")
        }
        chmod(open, 0o777)
        XCTAssertNotNil(PathTrust.current.problem(with: open), "without the sticky bit it is refused")
    }

    func testAnOrdinaryAccountTrustsItsOwnFilesAndRoots() throws {
        try requireRoot()
        let file = fixture.write("own", "x")
        XCTAssertEqual(chown(file, stranger, stranger), 0)
        XCTAssertNil(PathTrust(owners: [stranger]).problem(with: file), "the account's own file")
        XCTAssertNotNil(PathTrust(owners: [4243]).problem(with: file), "another account's file")
        XCTAssertNil(PathTrust(owners: [4243]).problem(with: fixture.root + "/etc/services"), "root's file")
    }

    // MARK: keys and passwords

    func testAPrivateKeyGivenAsPasswordFileIsRefused() {
        let key = fixture.key("home/.ssh/id_ed25519")
        fixture.write("conf/a", stanza("a", port: 1, extra: "    password_file = \(key)\n"))
        let configuration = fixture.load()
        XCTAssertEqual(configuration.services.map(\.name), [])
        XCTAssertEqual(fixture.messages(configuration), [
            "ROOT/conf/a:7: error: a: password_file ROOT/home/.ssh/id_ed25519 looks like a private key, not a password: refused; give a file that holds only the password, or use identity = ROOT/home/.ssh/id_ed25519",
        ])
        XCTAssertThrowsError(try PrivateFile.readSecret(key, attribute: "password_file")) { error in
            XCTAssertTrue("\(error)".contains("looks like a private key"), "\(error)")
            XCTAssertFalse("\(error)".contains("PRIVATE"), "the key's text is never in the message: \(error)")
        }
        let body = try! String(contentsOfFile: key, encoding: .utf8).split(separator: "\n")[1]
        let oneLine = fixture.write("home/.ssh/one-line", String(body), mode: 0o600)
        XCTAssertThrowsError(try PrivateFile.readSecret(oneLine, attribute: "password_file"), "the base64 of a key alone, on one line")
    }

    func testAPasswordFileOfSeveralLinesIsRefused() {
        let path = fixture.write("home/pw", "secret\nsecond\n", mode: 0o600)
        XCTAssertThrowsError(try PrivateFile.readSecret(path, attribute: "password_file")) { error in
            XCTAssertEqual("\(error)", "password_file \(path) holds more than one line: refused; put only the password in it, on one line")
        }
        let good = fixture.write("home/good", "secret\n", mode: 0o600)
        XCTAssertEqual(try PrivateFile.readSecret(good, attribute: "password_file"), "secret")
    }

    func testKeysAndPasswordsOfAnotherAccountAreRefusedButRunAsOwnsItsOwn() throws {
        try requireRoot()
        let key = fixture.key("keys/id_ed25519")
        let password = fixture.write("keys/password", "secret\n", mode: 0o600)
        for path in [key, password] { XCTAssertEqual(chown(path, stranger, stranger), 0) }
        fixture.write("conf/a", stanza("a", port: 1, extra: "    identity = \(key)\n"))
        fixture.write("conf/b", stanza("b", port: 2, extra: "    password_file = \(password)\n"))
        XCTAssertEqual(fixture.messages(fixture.load()), [
            "ROOT/conf/a:7: error: a: identity ROOT/keys/id_ed25519: owned by uid 4242: refused; chown root ROOT/keys/id_ed25519",
            "ROOT/conf/b:7: error: b: password_file ROOT/keys/password: owned by uid 4242: refused; chown root ROOT/keys/password",
        ])
        XCTAssertThrowsError(try PrivateFile.readSecret(password, attribute: "password_file"), "checked again when used")

        // run_as reads its keys after the switch: its own files are trusted.
        fixture.write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nmailer:x:4242:4242::\(fixture.root)/mailer-home:/bin/sh\n")
        fixture.write("conf/00-defaults", "defaults { run_as = mailer }\n")
        XCTAssertEqual(fixture.messages(fixture.load()), [])
    }

    func testAKeyInADirectoryAnotherAccountCanWriteIsRefused() {
        let key = fixture.key("shared/id_ed25519")
        chmod(fixture.root + "/shared", 0o777)
        XCTAssertEqual(PrivateFile.problem(key, attribute: "identity")?.replacingOccurrences(of: fixture.root, with: "ROOT"),
                       "identity ROOT/shared: writable by group and others: refused (it holds ROOT/shared/id_ed25519); chmod go-w ROOT/shared")
    }

    // MARK: the control socket's group

    func testAGroupThatIsAnotherAccountsPrimaryGroupNeverGetsTheControlSocket() {
        fixture.write("etc/passwd", """
            root:x:0:0:root:/root:/bin/bash
            nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
            sync:x:4:65534:sync:/bin:/bin/sync
            tunneld:x:990:990::/var/lib/tunneld:/usr/sbin/nologin
            """)
        fixture.write("etc/group", "nogroup:x:65534:\ntunneld:x:990:\nstatus:x:991:alice\nusers:x:100:\n")
        var environment = fixture.environment
        environment.groupFile = fixture.root + "/etc/group"
        func load(_ defaults: String) -> Configuration {
            fixture.write("conf/00-defaults", "defaults { \(defaults) }\n")
            fixture.write("conf/a", stanza("a", port: 1))
            return ConfigurationLoader(environment: environment).load(path: fixture.root + "/conf")
        }
        let shared = load("run_as = nobody")
        XCTAssertNil(shared.globals.controlGroup, "the socket stays root's alone")
        XCTAssertEqual(fixture.messages(shared), [
            "ROOT/conf/00-defaults:1: error: the control socket's group nogroup is the primary group of sync too, who could then run tunneld status and reconnect; the socket stays root's alone (mode 0600): give run_as a group of its own (adduser --system --group nobody) or set control_group = GROUP in defaults to a group of its own",
        ])
        XCTAssertEqual(load("run_as = tunneld").globals.controlGroup, 990, "a group of its own")
        let chosen = load("run_as = nobody\n control_group = status")
        XCTAssertEqual(fixture.messages(chosen), [])
        XCTAssertEqual(chosen.globals.controlGroup, 991)
        XCTAssertNil(load("control_group = nogroup").globals.controlGroup)
        XCTAssertEqual(fixture.messages(load("control_group = wheel2")), ["ROOT/conf/00-defaults:1: error: control_group wheel2 is not a group on this machine; create it (addgroup --system wheel2) or fix the name"])
        XCTAssertNil(load("linger = 3").globals.controlGroup, "no run_as, no group: 0600")
    }
}
