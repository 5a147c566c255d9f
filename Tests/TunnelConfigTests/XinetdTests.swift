import XCTest
@testable import TunnelConfig

/// Existing xinetd stanzas keep working: the `ssh … netcat` command form is translated.
final class XinetdTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    private func load(_ body: String) -> (Service?, [String]) {
        fixture.write("conf", "service old\n{\n\(body)\n}\n")
        let configuration = fixture.load()
        return (configuration.services.first, fixture.messages(configuration))
    }

    func testTheClassicNetcatStanza() throws {
        let (loaded, messages) = load("""
            type        = UNLISTED
            socket_type = stream
            protocol    = tcp
            wait        = no
            flags       = REUSE
            port        = 2525
            user        = mailer
            server      = /usr/bin/ssh
            server_args = -q -T relay@mail.example.org netcat localhost smtp
            host_key    = accept-new
            """)
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "mail.example.org", port: 22))
        XCTAssertEqual(service.user, "relay")
        XCTAssertEqual(service.target, Endpoint(host: "localhost", port: 25))
        XCTAssertEqual(service.identities, [fixture.root + "/mailer-home/.ssh/id_ed25519", fixture.root + "/mailer-home/.ssh/id_ecdsa"], "xinetd's user is whose ~/.ssh is used")
        XCTAssertEqual(messages, [])
    }

    func testSSHOptionsAreUnderstood() throws {
        let key = fixture.key("id")
        let (loaded, messages) = load("""
            port        = 2525
            user        = mailer
            server      = /usr/bin/ssh
            server_args = -p 2222 -l tunnel -i \(key) -o ServerAliveInterval=30 mail.example.org nc -q0 127.0.0.1 25
            host_key    = accept-new
            """)
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "mail.example.org", port: 2222))
        XCTAssertEqual(service.user, "tunnel")
        XCTAssertEqual(service.target, Endpoint(host: "127.0.0.1", port: 25))
        XCTAssertEqual(service.identities, [key])
        XCTAssertEqual(messages, ["ROOT/conf:6: warning: old: ssh options -o ServerAliveInterval=30 are ignored; tunneld makes the connection itself"])
    }

    func testDashOAndDashWForms() throws {
        let (loaded, messages) = load("""
            port        = 2525
            server      = /usr/bin/ssh
            server_args = -o Port=2200 -o User=relay -W carbon:6001 bastion.example.org
            host_key    = accept-new
            """)
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "bastion.example.org", port: 2200))
        XCTAssertEqual(service.user, "relay")
        XCTAssertEqual(service.target, Endpoint(host: "carbon", port: 6001))
        XCTAssertEqual(service.identities.first, fixture.home + "/.ssh/id_ed25519", "without user, the running account's keys")
    }

    func testIncompatibleXinetdSettingsAreClearErrors() {
        let body = "port = 1\nserver = h\nserver_args = localhost 25\n"
        XCTAssertEqual(load(body + "socket_type = dgram").1.first, "ROOT/conf:6: error: old: socket_type = dgram: tunneld carries TCP streams only; set socket_type = stream or remove it")
        XCTAssertEqual(load(body + "protocol = udp").1.first, "ROOT/conf:6: error: old: protocol = udp: tunneld carries TCP streams only; set protocol = tcp or remove it")
        XCTAssertEqual(load(body + "wait = yes").1.first, "ROOT/conf:6: error: old: wait = yes: tunneld accepts every connection itself; set wait = no or remove it")
        XCTAssertEqual(load(body + "flags = SENSOR").1.first, "ROOT/conf:6: warning: old: flag SENSOR has no meaning for tunneld; ignored")
    }

    func testJumpHostOptionsBecomeJumpHosts() throws {
        let (loaded, messages) = load("port = 1\nserver = /usr/bin/ssh\nserver_args = -J carol@bastion:2222,relay inner nc localhost 25\nknown_hosts = /dev/null")
        let service = try XCTUnwrap(loaded, "\(messages)")
        XCTAssertEqual(service.server, Endpoint(host: "inner", port: 22))
        XCTAssertEqual(service.route.jump.map(\.login), ["carol@bastion:2222", "kiosk@relay:22"], "a hop without user@ logs in as the account, as ssh does")
        XCTAssertEqual(service.route.jump.first?.identities, service.identities, "hops use the stanza's keys")
        XCTAssertEqual(load("port = 1\nserver = /usr/bin/ssh\nserver_args = -o ProxyJump=bastion inner nc localhost 25\nknown_hosts = /dev/null").0?.route.jump.map(\.login), ["kiosk@bastion:22"])
        XCTAssertEqual(load("port = 1\nserver = /usr/bin/ssh\nserver_args = -o ProxyJump=none inner nc localhost 25\nknown_hosts = /dev/null").0?.route.jump, [])
    }

    func testProxyCommandsOtherThanSSHDashWAreRefused() {
        XCTAssertEqual(load("port = 1\nserver = /usr/bin/ssh\nserver_args = -o ProxyCommand=nc inner nc localhost 25").1.first, "ROOT/conf:5: error: old: ssh -o ProxyCommand=nc runs a program tunneld cannot; only ssh -W %h:%p HOST is understood (as a jump host): use -J HOST")
    }

    func testCommandsOtherThanNetcatAreRefused() {
        XCTAssertEqual(load("port = 1\nserver = /usr/bin/ssh\nserver_args = host /bin/sh -c 'cat'").1.first, "ROOT/conf:5: error: old: server_args must run netcat on the server (… host nc HOST PORT) or use -W HOST:PORT; tunneld cannot carry other commands")
        XCTAssertEqual(load("port = 1\nserver = /usr/bin/ssh").1.first, "ROOT/conf:1: error: old: server = /usr/bin/ssh needs server_args = [options] [user@]host nc HOST PORT")
        XCTAssertEqual(load("port = 1\nuser = nobody-here\nserver = /usr/bin/ssh\nserver_args = h nc x 1").1.first, "ROOT/conf:4: error: old: user nobody-here is not an account on this machine; xinetd's user names the local account whose ~/.ssh keys are used")
    }
}
