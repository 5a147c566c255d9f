import XCTest
@testable import TunnelConfig

/// Each attribute's good and bad values, its default, and the exact message of its error.
final class AttributeTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    /// Loads one stanza made of the minimal body plus `extra` lines; returns it or nil.
    private func service(_ extra: String, body: String = minimalBody) -> (Service?, [String]) {
        fixture.write("conf", "service s\n{\n\(body)\n\(extra)\n}\n")
        let configuration = fixture.load()
        return (configuration.services.first, fixture.messages(configuration))
    }

    func testDefaults() throws {
        let (loaded, messages) = service("known_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.listen, Endpoint(host: "127.0.0.1", port: 7777))
        XCTAssertEqual(service.server, Endpoint(host: "mail.example.org", port: 22))
        XCTAssertEqual(service.user, "kiosk")
        XCTAssertEqual(service.target, Endpoint(host: "localhost", port: 25))
        XCTAssertEqual(service.identities, [fixture.home + "/.ssh/id_ed25519", fixture.home + "/.ssh/id_ecdsa"])
        XCTAssertEqual(service.identityAgent, "/run/agent.sock")
        XCTAssertEqual(service.hostKeyPolicy, .strict)
        XCTAssertEqual(service.linger, 30)
        XCTAssertEqual(service.sessions, 4)
        XCTAssertFalse(service.isPersistent)
        XCTAssertEqual(service.keepalive, Keepalive(interval: 15, count: 3))
        XCTAssertEqual(service.connectTimeout, 10)
        XCTAssertNil(service.instances)
        XCTAssertNil(service.perSource)
        XCTAssertNil(service.cps)
        XCTAssertNil(service.onlyFrom)
        XCTAssertEqual(service.location.line, 1)
    }

    func testPortByNumberOrServiceName() {
        XCTAssertEqual(service("", body: "port = smtp\nserver = h\nserver_args = localhost sip").0?.listen.port, 25)
        XCTAssertEqual(service("", body: "port = smtp\nserver = h\nserver_args = localhost sip").0?.target.port, 5060)
        XCTAssertEqual(service("", body: "port = 65535\nserver = h\nserver_args = localhost 1").0?.listen.port, 65535)
        XCTAssertEqual(service("", body: "port = 0\nserver = h\nserver_args = localhost 25").1.first, "ROOT/conf:3: error: s: port: port 0 is out of range; use 1–65535")
        XCTAssertEqual(service("", body: "port = nosuch\nserver = h\nserver_args = localhost 25").1.first, "ROOT/conf:3: error: s: port: unknown port 'nosuch'; use a number or a TCP service name from /etc/services")
        XCTAssertEqual(service("", body: "port = domain\nserver = h\nserver_args = localhost 25").1.first, "ROOT/conf:3: error: s: port: unknown port 'domain'; use a number or a TCP service name from /etc/services", "UDP-only names are not ports for tunneld")
        XCTAssertEqual(service("", body: "server = h\nserver_args = localhost 25").1.first, "ROOT/conf:1: error: s: no port; add port = NUMBER (the local port to listen on)")
    }

    func testBindAddresses() {
        XCTAssertEqual(service("bind = localhost").0?.listen.host, "127.0.0.1")
        XCTAssertEqual(service("bind = ::1").0?.listen.host, "::1")
        XCTAssertEqual(service("bind = [::1]").0?.listen.host, "::1")
        XCTAssertEqual(service("bind = 127.0.0.2").0?.listen.host, "127.0.0.2")
        XCTAssertEqual(service("bind = * \n only_from = 10.0.0.0/8").0?.listen.host, "0.0.0.0")
        XCTAssertEqual(service("interface = 127.0.0.3").0?.listen.host, "127.0.0.3")
        XCTAssertEqual(service("bind = 300.1.1.1").1.first, "ROOT/conf:6: error: s: bind '300.1.1.1' is not an address; use an IPv4 or IPv6 address, localhost, or *")
    }

    func testNonLoopbackBindWithoutOnlyFromIsAWarning() {
        let (loaded, messages) = service("bind = *")
        XCTAssertNotNil(loaded)
        XCTAssertTrue(messages.contains("ROOT/conf:6: warning: s: listens on 0.0.0.0, beyond this machine, with no only_from; anyone who reaches the port can use the tunnel; add only_from = ADDRESSES"), "\(messages)")
        XCTAssertFalse(service("bind = *\nonly_from = 192.0.2.0/24").1.contains { $0.contains("beyond this machine") })
    }

    func testServerForms() {
        let body = "port = 1\nserver_args = localhost 25\n"
        XCTAssertEqual(service("", body: body + "server = bastion").0?.server, Endpoint(host: "bastion", port: 22))
        XCTAssertEqual(service("", body: body + "server = bastion:2222").0?.server, Endpoint(host: "bastion", port: 2222))
        XCTAssertEqual(service("", body: body + "server = [2001:db8::1]:2222").0?.server, Endpoint(host: "2001:db8::1", port: 2222))
        XCTAssertEqual(service("", body: body + "server = 2001:db8::1").0?.server, Endpoint(host: "2001:db8::1", port: 22))
        let withUser = service("", body: body + "server = kiosk2@bastion.example.org:22").0
        XCTAssertEqual(withUser?.user, "kiosk2")
        XCTAssertEqual(withUser?.server.host, "bastion.example.org")
        XCTAssertEqual(service("user = other", body: body + "server = kiosk2@bastion").0?.user, "other")
        XCTAssertEqual(service("", body: body + "server = bastion:99999").1.first, "ROOT/conf:5: error: s: server 'bastion:99999' is not [USER@]HOST[:PORT]; write e.g. server = tunnel@bastion.example.org:22 or [2001:db8::1]:2222")
        XCTAssertEqual(service("", body: "port = 1\nserver_args = localhost 25").1.first, "ROOT/conf:1: error: s: no server; add server = [USER@]HOST[:PORT] (the SSH server to go through)")
    }

    func testTarget() {
        XCTAssertEqual(service("", body: "port = 1\nserver = h\nserver_args = carbon 6001").0?.target, Endpoint(host: "carbon", port: 6001))
        XCTAssertEqual(service("", body: "port = 1\nserver = h\nserver_args = carbon").1.first, "ROOT/conf:5: error: s: server_args 'carbon' is not HOST PORT; write the target as the SSH server sees it, e.g. server_args = localhost 25")
        XCTAssertEqual(service("", body: "port = 1\nserver = h").1.first, "ROOT/conf:1: error: s: no server_args; add server_args = HOST PORT (the target, as the SSH server sees it)")
    }

    func testDurationsAndNumbers() throws {
        let (loaded, messages) = service("linger = 0.5\nconnect_timeout = 2m\nkeepalive = 5 2\npersistent = yes\ninstances = 10\nper_source = UNLIMITED\ncps = 50 10")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.linger, 0.5)
        XCTAssertEqual(service.connectTimeout, 120)
        XCTAssertEqual(service.keepalive, Keepalive(interval: 5, count: 2))
        XCTAssertTrue(service.isPersistent)
        XCTAssertEqual(service.instances, 10)
        XCTAssertNil(service.perSource)
        XCTAssertEqual(service.cps, ConnectionRate(rate: 50, pause: 10))
        XCTAssertEqual(self.service("keepalive = 15").0?.keepalive, Keepalive(interval: 15, count: 3))
    }

    func testBadNumbersSayWhatToWrite() {
        XCTAssertEqual(service("linger = soon").1.first, "ROOT/conf:6: error: s: linger: 'soon' is not a duration; use seconds like 30, 0.5, or 5m")
        XCTAssertEqual(service("connect_timeout = 0").1.first, "ROOT/conf:6: error: s: connect_timeout: '0' must be more than 0")
        XCTAssertEqual(service("keepalive = a b c").1.first, "ROOT/conf:6: error: s: keepalive 'a b c' is not INTERVAL [COUNT], e.g. keepalive = 15 3")
        XCTAssertEqual(service("keepalive = 5 0").1.first, "ROOT/conf:6: error: s: keepalive count '0' is not a number from 1 to 100")
        XCTAssertEqual(service("instances = -1").1.first, "ROOT/conf:6: error: s: instances: '-1' is not a positive number or UNLIMITED")
        XCTAssertEqual(service("cps = 50").1.first, "ROOT/conf:6: error: s: cps '50' is not RATE SECONDS, e.g. cps = 50 10")
        XCTAssertEqual(service("persistent = maybe").1.first, "ROOT/conf:6: error: s: persistent: 'maybe' is not yes or no")
        XCTAssertEqual(service("sessions = 0").1.first, "ROOT/conf:6: error: s: sessions: '0' is not a session count; use 1 to 64")
        XCTAssertEqual(service("sessions = 2").0?.sessions, 2)
        XCTAssertEqual(service("sessions = 2").0?.mostSessions, 18, "a burst may add 16")
        XCTAssertEqual(service("sessions = 1 1").0?.mostSessions, 1, "pinned: no burst sessions")
        XCTAssertEqual(service("sessions = 4 8").0?.mostSessions, 8)
        XCTAssertEqual(service("sessions = 4 30").1.first, "ROOT/conf:6: error: s: sessions MOST '30' is not a number from 4 to 20: a burst may raise 4 sessions by at most 16")
        XCTAssertEqual(service("sessions = 1 2 3").1.first, "ROOT/conf:6: error: s: sessions '1 2 3' is not N [MOST], e.g. sessions = 4 or sessions = 1 1")
        XCTAssertEqual(service("linger = 1 2").1.first, "ROOT/conf:6: error: s: linger takes one value, not 2: 1 2")
        XCTAssertEqual(service("host_key = loose").1.first, "ROOT/conf:6: error: s: host_key 'loose' is not strict or accept-new")
    }

    func testAccessLists() throws {
        let (loaded, messages) = service("only_from = 127.0.0.1 10.0.0.0/8 2001:db8::/32 kiosk.example.org\nno_access = 10.1.0.0/16")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.onlyFrom, [
            .network(address: [127, 0, 0, 1], prefixLength: 32),
            .network(address: [10, 0, 0, 0], prefixLength: 8),
            .network(address: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 12), prefixLength: 32),
            .hostname("kiosk.example.org"),
        ])
        XCTAssertEqual(service.noAccess, [.network(address: [10, 1, 0, 0], prefixLength: 16)])
        XCTAssertEqual(self.service("only_from = 10.1.0.0 0.0.0.0 192.0.2.10").0?.onlyFrom, [
            .network(address: [10, 1, 0, 0], prefixLength: 16),
            .network(address: [0, 0, 0, 0], prefixLength: 0),
            .network(address: [192, 0, 2, 10], prefixLength: 32),
        ], "trailing zero octets make a network, as in xinetd")
        XCTAssertEqual(self.service("only_from = 10.0.0.0/33").1.first, "ROOT/conf:6: error: s: only_from: '10.0.0.0/33' has a bad prefix length; use 0–32")
        XCTAssertEqual(self.service("no_access = bad!host").1.first, "ROOT/conf:6: error: s: no_access: 'bad!host' is not an address, a CIDR block or a host name")
    }

    func testJumpHosts() throws {
        let (loaded, messages) = service("jump = alice@bastion.example.org:2222, relay\nfingerprint = SHA256:\(String(repeating: "A", count: 43))\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.route.jump.map(\.login), ["alice@bastion.example.org:2222", "kiosk@relay:22"])
        XCTAssertEqual(service.route.jump.map(\.fingerprint), [nil, nil], "fingerprint pins the final server only")
        XCTAssertEqual(service.route.jump.map(\.knownHosts), [["/dev/null"], ["/dev/null"]])
        XCTAssertEqual(service.route.jumpRoute?.login, "kiosk@relay:22")
        XCTAssertEqual(service.route.jumpRoute?.jump.map(\.login), ["alice@bastion.example.org:2222"])
        XCTAssertEqual(self.service("jump = none\nknown_hosts = /dev/null").0?.route.jump, [])
        XCTAssertEqual(self.service("jump = bastion:99999").1.first, "ROOT/conf:6: error: s: jump host 'bastion:99999' is not [USER@]HOST[:PORT]; write e.g. jump = alice@bastion.example.org:22")
        let nine = (1...9).map { "h\($0)" }.joined(separator: ",")
        XCTAssertEqual(self.service("jump = \(nine)\nknown_hosts = /dev/null").1.first, "ROOT/conf:6: error: s: the route goes through 9 jump hosts; tunneld allows 8 at most")
    }

    func testJumpHostKeysCanBePinnedPerHop() throws {
        let pin = "SHA256:" + String(repeating: "B", count: 43)
        let (loaded, messages) = service("jump = bastion, relay\njump_fingerprint = - \(pin)\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.route.jump.map(\.fingerprint), [nil, pin])
        XCTAssertNil(service.fingerprint)
        XCTAssertEqual(self.service("jump = bastion\njump_fingerprint = \(pin) \(pin)").1.first, "ROOT/conf:7: error: s: jump_fingerprint names 2 keys for 1 jump host; give one per hop, first hop first (- for a hop checked by known_hosts)")
        XCTAssertEqual(self.service("jump = bastion\njump_fingerprint = MD5:aa").1.first, "ROOT/conf:7: error: s: jump_fingerprint: fingerprint 'MD5:aa' is not SHA256:…; print it with ssh-keygen -lf KEYFILE")
    }

    func testAJumpHostsMissingKeyIsAWarningWithAFixThroughTheHopBefore() {
        let known = fixture.write("known", "mail.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        let messages = service("jump = bastion,alice@relay:2200\nknown_hosts = \(known)").1
        XCTAssertEqual(messages, [
            "ROOT/conf:7: warning: s: known_hosts holds no key for jump host bastion:22; after checking the key, run: ssh-keyscan bastion >> ROOT/known",
            "ROOT/conf:7: warning: s: known_hosts holds no key for jump host relay:2200; after checking the key, run: ssh kiosk@bastion ssh-keyscan -p 2200 relay >> ROOT/known",
        ])
    }

    func testFingerprint() {
        let good = "SHA256:" + String(repeating: "A", count: 43)
        XCTAssertEqual(service("fingerprint = \(good)").0?.fingerprint, good)
        XCTAssertEqual(service("fingerprint = MD5:aa:bb").1.first, "ROOT/conf:6: error: s: fingerprint: fingerprint 'MD5:aa:bb' is not SHA256:…; print it with ssh-keygen -lf KEYFILE")
    }

    func testUnknownAttributesAreWarningsOnly() {
        let (loaded, messages) = service("colour = blue")
        XCTAssertNotNil(loaded)
        XCTAssertEqual(messages.first, "ROOT/conf:6: warning: s: unknown attribute colour; ignored")
    }

    func testAgentNoneAndLogFields() {
        XCTAssertNil(service("identity_agent = none").0?.identityAgent)
        XCTAssertEqual(service("log_on_success = HOST DURATION").0?.logFields.onSuccess, ["HOST", "DURATION"])
        XCTAssertEqual(service("log_on_failure = HOST BOGUS").1.first, "ROOT/conf:6: warning: s: log_on_failure field BOGUS is unknown; known: ATTEMPT DURATION EXIT HOST PID TRAFFIC USERID")
    }

    func testDisableTurnsTheServiceOff() {
        fixture.write("conf", "service s\n{\n\(minimalBody)\ndisable = yes\n}\n")
        let configuration = fixture.load()
        XCTAssertTrue(configuration.services.isEmpty)
        XCTAssertEqual(configuration.disabledServices.map(\.name), ["s"])
        XCTAssertFalse(configuration.hasErrors)
    }

    func testPasswordFileMustExistAndBePrivate() throws {
        let secret = fixture.write("password", "s3cret\n", mode: 0o640)
        XCTAssertEqual(service("password_file = \(secret)").1.first, "ROOT/conf:6: error: s: password_file ROOT/password is readable by group or others; chmod 600 ROOT/password")
        XCTAssertNil(service("password_file = \(secret)").0)
        chmod(secret, 0o600)
        let (loaded, messages) = service("password_file = \(secret)")
        XCTAssertEqual(try XCTUnwrap(loaded, "\(messages)").passwordFile, secret)
        XCTAssertEqual(loaded?.sessionKey.passwordFile, secret, "services with different passwords do not share a session")
        XCTAssertEqual(service("password_file = ~/pw").1.first, "ROOT/conf:6: error: s: password_file ROOT/home/pw does not exist")
        XCTAssertEqual(service("password_file = a b").1.first, "ROOT/conf:6: error: s: password_file takes one value, not 2: a b")
        XCTAssertNil(service("").0?.passwordFile)
    }

    func testPasswordFileHoldsOneLine() throws {
        for (content, password) in [("pw\n", "pw"), ("pw\r\n", "pw"), ("pw", "pw"), ("pw \n", "pw "), ("", "")] {
            let path = fixture.write("pw", content, mode: 0o600)
            XCTAssertEqual(try PrivateFile.readSecret(path, attribute: "password_file"), password, content.debugDescription)
        }
        // A second line (issue 22): a password file is one line, so a key file given by mistake is refused.
        XCTAssertThrowsError(try PrivateFile.readSecret(fixture.write("pw", "pw \n\n", mode: 0o600), attribute: "password_file"))
        let open = fixture.write("open", "pw\n", mode: 0o644)
        XCTAssertThrowsError(try PrivateFile.readSecret(open, attribute: "password_file")) { error in
            XCTAssertEqual("\(error)", "password_file \(open) is readable by group or others; chmod 600 \(open)")
        }
    }

    func testCheckListsThePasswordFileNeverThePassword() {
        let secret = fixture.write("password", "hunter2-9981\n", mode: 0o600)
        fixture.write("conf", "service s\n{\n\(minimalBody)\npassword_file = \(secret)\nknown_hosts = /dev/null\n}\n")
        let report = CheckReport(fixture.load()).render()
        XCTAssertTrue(report.contains("; password_file \(secret); known_hosts"), report)
        XCTAssertFalse(report.contains("hunter2"), report)
    }
}
