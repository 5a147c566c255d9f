import XCTest
@testable import TunnelConfig

/// `ssh_config = yes | PATH`: `server` names a Host alias that OpenSSH's own resolver
/// (`ssh -G`) turns into HostName, Port, User, keys and more; stanza settings win.
final class SSHConfigTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/ssh") else { throw XCTSkip("needs OpenSSH's ssh at /usr/bin/ssh") }
        fixture = ConfigFixture()
        fixture.key("home/.ssh/id_mail")
        fixture.write("home/.ssh/config", """
            Host mail
                HostName 127.0.0.1
                Port 2222
                User postman
                IdentityFile ~/.ssh/id_mail
                IdentityFile ~/.ssh/id_missing
                UserKnownHostsFile ~/.ssh/known_hosts_mail
                StrictHostKeyChecking accept-new
                ConnectTimeout 7
                ServerAliveInterval 5
                ServerAliveCountMax 2
            Host jumpy
                HostName 10.0.0.9
                ProxyJump bastion.example.org
            Host proxied
                ProxyCommand nc %h %p
            Host walled
                HostName 10.0.0.10
                ProxyJump gate,mail
            Host gate
                HostName 192.0.2.7
                Port 2022
                User warden
                StrictHostKeyChecking accept-new
            Host wrapped
                ProxyCommand ssh -q -W %h:%p -l porter gate
            Host v4only
                HostName mail.example.org
                AddressFamily inet
                ProxyJump gate6
            Host gate6
                AddressFamily inet6
            Host loop1
                ProxyJump loop2
            Host loop2
                ProxyJump loop1
            """)
    }

    private func service(_ lines: String) -> (Service?, [String]) {
        fixture.write("conf", "service s\n{\nport = 7777\nserver_args = localhost 25\n\(lines)\n}\n")
        let configuration = fixture.load()
        return (configuration.services.first, fixture.messages(configuration))
    }

    func testAddressFamilyRestrictsTheServerAndEachHopAndFlagsWin() throws {
        let (loaded, messages) = service("server = v4only\nssh_config = yes\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.addressFamily, .ipv4, "AddressFamily inet is ssh -4")
        XCTAssertEqual(service.route.jump.map(\.addressFamily), [.ipv6], "the jump host's own AddressFamily inet6")
        XCTAssertEqual(self.service("server = mail\nssh_config = yes").0?.addressFamily, .any, "no AddressFamily: both, raced")
        let flagged = try XCTUnwrap(self.service("server = v4only\nssh_config = yes\nknown_hosts = /dev/null\nflags = IPv6").0)
        XCTAssertEqual(flagged.addressFamily, .ipv6, "the stanza's flags win over ssh_config")
        XCTAssertEqual(flagged.route.jump.map(\.addressFamily), [.ipv6])
    }

    func testAnAliasTakesItsSettingsFromHOMEsSSHConfig() throws {
        let (loaded, messages) = service("server = mail\nssh_config = yes")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "127.0.0.1", port: 2222))
        XCTAssertEqual(service.user, "postman")
        XCTAssertEqual(service.identities, [fixture.home + "/.ssh/id_mail"], "a missing IdentityFile is skipped, as ssh does")
        XCTAssertEqual(service.knownHosts, [fixture.home + "/.ssh/known_hosts_mail"], "~ is HOME's, not the passwd home")
        XCTAssertEqual(service.hostKeyPolicy, .acceptNew)
        XCTAssertEqual(service.connectTimeout, 7)
        XCTAssertEqual(service.keepalive, Keepalive(interval: 5, count: 2))
        let report = CheckReport(fixture.load()).render().replacingOccurrences(of: fixture.root, with: "ROOT")
        XCTAssertTrue(report.contains("""
            s: server mail resolved by ssh -G -F ROOT/home/.ssh/config:
              hostname 127.0.0.1 (ssh_config)
              port 2222 (ssh_config)
              user postman (ssh_config)
              identity ROOT/home/.ssh/id_mail (ssh_config)
              known_hosts ROOT/home/.ssh/known_hosts_mail (ssh_config)
              host_key accept-new (ssh_config)
              connect_timeout 7 (ssh_config)
              keepalive 5 2 (ssh_config)
            """), report)
    }

    func testStanzaSettingsWin() throws {
        let (loaded, messages) = service("server = mail:2200\nssh_config = yes\nuser = clerk\nhost_key = strict\nconnect_timeout = 3\nkeepalive = 20 4\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "127.0.0.1", port: 2200))
        XCTAssertEqual(service.user, "clerk")
        XCTAssertEqual(service.hostKeyPolicy, .strict)
        XCTAssertEqual(service.connectTimeout, 3)
        XCTAssertEqual(service.keepalive, Keepalive(interval: 20, count: 4))
        XCTAssertEqual(service.knownHosts, ["/dev/null"])
        XCTAssertEqual(service.sshConfig?.settings.first { $0.name == "port" }?.source, "stanza")
        XCTAssertEqual(service.sshConfig?.settings.first { $0.name == "hostname" }?.source, "ssh_config")
    }

    func testWithoutSSHConfigAnAliasIsJustAHostName() throws {
        let (loaded, messages) = service("server = mail\nknown_hosts = /dev/null")
        XCTAssertEqual(try XCTUnwrap(loaded, "\(messages)").server, Endpoint(host: "mail", port: 22))
        XCTAssertNil(loaded?.sshConfig)
        XCTAssertEqual(service("server = mail\nssh_config = no\nknown_hosts = /dev/null").0?.server, Endpoint(host: "mail", port: 22))
    }

    func testAGivenPathIsReadInsteadOfHOMEs() throws {
        let other = fixture.write("other_config", "Host mail\n    HostName 127.0.0.5\n    Port 2201\n")
        let (loaded, messages) = service("server = mail\nssh_config = \(other)\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "127.0.0.5", port: 2201))
        XCTAssertEqual(service.user, "kiosk", "no User there: the default login")
        XCTAssertEqual(service.sshConfig?.file, other)
    }

    func testProxyJumpHostsAreResolvedAsAliasesToo() throws {
        let (loaded, messages) = service("server = walled\nssh_config = yes\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "10.0.0.10", port: 22))
        XCTAssertEqual(service.route.jump.map(\.server), [Endpoint(host: "192.0.2.7", port: 2022), Endpoint(host: "127.0.0.1", port: 2222)])
        XCTAssertEqual(service.route.jump.map(\.user), ["warden", "postman"])
        XCTAssertEqual(service.route.jump[0].hostKeyPolicy, .acceptNew, "each hop has its own host key rule")
        XCTAssertEqual(service.route.jump[1].identities, [fixture.home + "/.ssh/id_mail"], "and its own identity")
        XCTAssertEqual(service.route.jump[1].knownHosts, [fixture.home + "/.ssh/known_hosts_mail"])
        XCTAssertEqual(service.route.jumpRoute?.server, Endpoint(host: "127.0.0.1", port: 2222))
        XCTAssertEqual(service.route.jumpRoute?.jump.map(\.server), [Endpoint(host: "192.0.2.7", port: 2022)])
        XCTAssertEqual(service.route.chain, "warden@192.0.2.7:2022 -> postman@127.0.0.1:2222 -> kiosk@10.0.0.10:22")
        XCTAssertEqual(service.sshConfig?.settings.first { $0.name == "jump" }, .init(name: "jump", value: "warden@192.0.2.7:2022,postman@127.0.0.1:2222", source: "ssh_config"))
    }

    func testAnSSHDashWProxyCommandIsAJumpHost() throws {
        let (loaded, messages) = service("server = wrapped\nssh_config = yes\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.route.jump.map(\.login), ["porter@192.0.2.7:2022"], "-l wins over the alias's User, as ssh does")
    }

    func testTheStanzasJumpWinsOverProxyJump() throws {
        let (loaded, messages) = service("server = jumpy\nssh_config = yes\njump = none\nknown_hosts = /dev/null")
        XCTAssertEqual(try XCTUnwrap(loaded, "\(messages)").route.jump, [])
        let (other, _) = service("server = jumpy\nssh_config = yes\njump = alice@gate:22\nknown_hosts = /dev/null")
        XCTAssertEqual(other?.route.jump.map(\.login), ["alice@192.0.2.7:22"], "written user and port win over the alias's")
    }

    func testOtherProxyCommandsAndLoopsAreClearErrors() {
        XCTAssertEqual(service("server = proxied\nssh_config = yes").1.first, "ROOT/conf:6: error: s: ssh_config gives proxied ProxyCommand nc %h %p, which tunneld cannot run; only ssh -W %h:%p HOST is understood (as a jump host): use ProxyJump HOST, or set jump in the stanza")
        XCTAssertNil(service("server = proxied\nssh_config = yes").0)
        XCTAssertEqual(service("server = loop1\nssh_config = yes\nknown_hosts = /dev/null").1.first, "ROOT/conf:6: error: s: ssh_config's ProxyJump settings go round in a loop (loop1 -> loop2 -> loop1); fix the ssh_config file")
    }

    func testAMissingConfigFileIsAnError() {
        XCTAssertEqual(service("server = mail\nssh_config = ~/nosuch").1.first, "ROOT/conf:6: error: s: ssh_config ROOT/home/nosuch does not exist or cannot be read; fix the path")
        try? FileManager.default.removeItem(atPath: fixture.home + "/.ssh/config")
        XCTAssertEqual(service("server = mail\nssh_config = yes").1.first, "ROOT/conf:6: error: s: ssh_config = yes reads ROOT/home/.ssh/config, which does not exist or cannot be read; create it, or set ssh_config = PATH")
    }

    func testABrokenConfigFileSaysWhatSSHSaid() {
        let broken = fixture.write("broken", "Host mail\n    NoSuchKeyword 1\n")
        let message = service("server = mail\nssh_config = \(broken)").1.first ?? ""
        XCTAssertTrue(message.hasPrefix("ROOT/conf:6: error: s: ssh_config: /usr/bin/ssh -G failed: "), message)
        XCTAssertTrue(message.contains("broken: line 2: Bad configuration option: nosuchkeyword"), message)
    }
}
