import Foundation
import Glibc
import XCTest

/// Jump hosts (issue 14): sessions to a server that run over a `direct-tcpip` channel of a
/// session to a jump host, with real sshd instances on loopback: a bastion, and servers
/// behind it.
final class JumpHostTests: XCTestCase {
    private var bastion: SSHServer!
    private var inner: SSHServer!
    private var echo: EchoServer!

    override func setUpWithError() throws {
        bastion = try SSHServer()
        inner = try SSHServer()
        echo = try EchoServer()
    }

    override func tearDown() {
        bastion = nil
        inner = nil
        echo = nil
    }

    /// A known_hosts file with the keys of `servers`.
    private func knownHosts(_ servers: [SSHServer], in directory: ScratchDirectory) throws -> String {
        let lines = try servers.map { try String(contentsOfFile: $0.knownHosts, encoding: .utf8) }.joined()
        return directory.write("known_hosts", lines)
    }

    /// A service to `server`'s echo target (or `target`) through `bastion`, with the keys of
    /// `keysOf` (the bastion's and the server's by default).
    private func jumpStanza(_ name: String, port: UInt16, to server: SSHServer, knownHosts: String, target: UInt16? = nil, keysOf: [SSHServer]? = nil, extra: String = "") -> String {
        """
        service \(name)
        {
            port            = \(port)
            server          = \(server.user)@127.0.0.1:\(server.port)
            jump            = \(bastion.user)@127.0.0.1:\(bastion.port)
            server_args     = 127.0.0.1 \(target ?? echo.port)
            identity        = \((keysOf ?? [bastion, server]).map(\.userKey).joined(separator: " "))
            identity_agent  = none
            known_hosts     = \(knownHosts)
            connect_timeout = 5
        \(extra)
        }

        """
    }

    func testTwoServersBehindOneJumpSessionAndBothComeBackAfterItDies() throws {
        let second = try SSHServer()
        let keys = ScratchDirectory("keys")
        let known = try knownHosts([bastion, inner, second], in: keys)
        // The bastion forwards to the two servers and nowhere else.
        try bastion.writeAuthorizedKeys(options: "restrict,port-forwarding,permitopen=\"127.0.0.1:\(inner.port)\",permitopen=\"127.0.0.1:\(second.port)\"")
        let (portA, portB) = (TCP.freePort(), TCP.freePort())
        let tunneld = try TunneldProcess(stanzas: [
            // Services with the same jump host, login, keys and known_hosts share its sessions.
            "a": jumpStanza("a", port: portA, to: inner, knownHosts: known, keysOf: [bastion, inner, second]),
            "b": jumpStanza("b", port: portB, to: second, knownHosts: known, keysOf: [bastion, inner, second]),
        ])
        XCTAssertEqual(try TCP.exchange(port: portA, Array("through the bastion".utf8)), Array("through the bastion".utf8), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: portB, Array("and again".utf8)), Array("and again".utf8), tunneld.log)
        XCTAssertEqual(bastion.acceptedLogins, 1, "one jump session carries both servers' sessions")
        XCTAssertEqual(inner.acceptedLogins, 1)
        XCTAssertEqual(second.acceptedLogins, 1)
        XCTAssertTrue(tunneld.log.contains("via=\"\(bastion.user)@127.0.0.1:\(bastion.port) -> \(inner.user)@127.0.0.1:\(inner.port)\""), tunneld.log)

        // The jump session dies: the sessions it carried end with it, and the next client of
        // each service brings the whole chain back.
        bastion.killSessions()
        XCTAssertTrue(tunneld.waitForLog("session down", count: 3, timeout: 10), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: portA, Array("back".utf8)), Array("back".utf8), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: portB, Array("back too".utf8)), Array("back too".utf8), tunneld.log)
        XCTAssertEqual(bastion.acceptedLogins, 2, tunneld.log)
        XCTAssertEqual(inner.acceptedLogins, 2)
        XCTAssertEqual(second.acceptedLogins, 2)

        // The jump host's sshd goes away altogether: clients are told why, naming it; once it
        // is back, the next client gets through (backoff never refuses past a second).
        bastion.stop()
        XCTAssertTrue(tunneld.waitForLog("session down", count: 6, timeout: 10), tunneld.log)
        XCTAssertEqual((try? TCP.exchange(port: portA, Array("lost".utf8))) ?? [], [])
        XCTAssertTrue(waitUntil(timeout: 5) {
            tunneld.connectionLines(containing: "service=a ").last?.contains("through jump host \(bastion.user)@127.0.0.1:\(bastion.port): cannot connect") == true
        }, tunneld.log)
        try bastion.start()
        Thread.sleep(forTimeInterval: 1.1)
        XCTAssertEqual(try TCP.exchange(port: portA, Array("found".utf8)), Array("found".utf8), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: portB, Array("found too".utf8)), Array("found too".utf8), tunneld.log)
    }

    func testAServerThatSpeaksFirstIsNotDelayedByNagleThroughTheJumpHost() throws {
        let keys = ScratchDirectory("keys")
        let known = try knownHosts([bastion, inner], in: keys)
        let smtp = try EchoServer(greeting: "220 mail.example ESMTP")
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["smtp": jumpStanza("smtp", port: port, to: inner, knownHosts: known, target: smtp.port)])
        // Back to back, as a mail client flushing its queue: each new channel's open overlaps
        // the close of the one before.
        let times: [Double]
        do {
            times = try TCP.serverFirstExchangeTimes(port: port, count: 100)
        } catch {
            return XCTFail("\(error); tunneld's log:\n\(tunneld.log)")
        }
        let (median, p90) = (times[times.count / 2], times[times.count * 9 / 10])
        print(String(format: "server-first exchange through a jump host: median %.2f ms, p90 %.2f ms, slowest %.2f ms", median * 1000, p90 * 1000, times.last! * 1000))
        XCTAssertLessThan(median, 0.015, "no 40 ms stall on the banner")
        XCTAssertLessThan(p90, 0.035, "nor when the open overlaps the previous channel's close")
        XCTAssertEqual(bastion.acceptedLogins, 1)
    }

    func testAHostKeyMismatchIsRefusedNamingTheHop() throws {
        let keys = ScratchDirectory("keys")
        // The bastion's key is unknown: the jump host is named, the inner server never tried.
        let onlyInner = try knownHosts([inner], in: keys)
        var port = TCP.freePort()
        var tunneld: TunneldProcess? = try TunneldProcess(stanzas: ["a": jumpStanza("a", port: port, to: inner, knownHosts: onlyInner)])
        XCTAssertEqual((try? TCP.exchange(port: port, Array("x".utf8))) ?? [], [])
        // The client's line, not the link's (service="jump …"), which comes first.
        XCTAssertTrue(waitUntil(timeout: 5) { !tunneld!.connectionLines(containing: "service=a ").isEmpty }, tunneld!.log)
        let bastionLine = try XCTUnwrap(tunneld!.connectionLines(containing: "service=a ").first, tunneld!.log)
        XCTAssertTrue(bastionLine.contains("through jump host \(bastion.user)@127.0.0.1:\(bastion.port): unknown host key for 127.0.0.1:\(bastion.port)"), bastionLine)
        XCTAssertEqual(inner.acceptedLogins, 0)
        tunneld = nil

        // The bastion is fine and the inner server's key changed: the inner server is named.
        try inner.changeHostKey(updateKnownHosts: false)
        let both = try knownHosts([bastion, inner], in: keys)
        port = TCP.freePort()
        tunneld = try TunneldProcess(stanzas: ["a": jumpStanza("a", port: port, to: inner, knownHosts: both)])
        XCTAssertEqual((try? TCP.exchange(port: port, Array("x".utf8))) ?? [], [])
        XCTAssertTrue(waitUntil(timeout: 5) { !tunneld!.connectionLines(containing: "service=a ").isEmpty }, tunneld!.log)
        let innerLine = try XCTUnwrap(tunneld!.connectionLines(containing: "service=a ").first, tunneld!.log)
        XCTAssertTrue(innerLine.contains("HOST KEY CHANGED for 127.0.0.1:\(inner.port)"), innerLine)
        XCTAssertEqual(bastion.acceptedLogins, 1, "the jump host was logged in to")
        XCTAssertEqual(inner.acceptedLogins, 0)
    }

    func testAJumpHostsPinnedKeyIsCheckedForThatHop() throws {
        let keys = ScratchDirectory("keys")
        let onlyInner = try knownHosts([inner], in: keys)
        let wrong = "SHA256:" + String(repeating: "A", count: 43)
        for (pin, works) in [(try bastion.hostKeyFingerprint(), true), (wrong, false)] {
            let port = TCP.freePort()
            let tunneld = try TunneldProcess(stanzas: ["a": jumpStanza("a", port: port, to: inner, knownHosts: onlyInner, extra: "    jump_fingerprint = \(pin)")])
            let reply = (try? TCP.exchange(port: port, Array("pinned".utf8))) ?? []
            if works {
                XCTAssertEqual(reply, Array("pinned".utf8), "the bastion's pin stands in for its known_hosts line: \(tunneld.log)")
            } else {
                XCTAssertEqual(reply, [])
                XCTAssertTrue(waitUntil(timeout: 5) {
                    tunneld.connectionLines(containing: "service=a ").first?.contains("through jump host \(bastion.user)@127.0.0.1:\(bastion.port): host key of 127.0.0.1:\(bastion.port) is ssh-ed25519") == true
                }, tunneld.log)
            }
        }
    }

    func testCheckConnectWalksEveryHopAndNamesTheOneThatFailed() throws {
        let keys = ScratchDirectory("keys")
        let known = try knownHosts([bastion, inner], in: keys)
        let directory = ScratchDirectory("conf")
        directory.write("a", jumpStanza("a", port: TCP.freePort(), to: inner, knownHosts: known))
        let good = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("a")])
        XCTAssertEqual(good.status, 0, good.output + good.error)
        XCTAssertTrue(good.output.contains("\(bastion.user)@127.0.0.1:\(bastion.port) -> \(inner.user)@127.0.0.1:\(inner.port)"), good.output)

        inner.stop()
        let innerDown = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("a")])
        XCTAssertEqual(innerDown.status, 1, innerDown.output)
        XCTAssertTrue(innerDown.output.contains("jump host \(bastion.user)@127.0.0.1:\(bastion.port) could not open a channel to 127.0.0.1:\(inner.port)"), innerDown.output)

        bastion.stop()
        let bastionDown = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("a")])
        XCTAssertEqual(bastionDown.status, 1, bastionDown.output)
        XCTAssertTrue(bastionDown.output.contains("through jump host \(bastion.user)@127.0.0.1:\(bastion.port): cannot connect to 127.0.0.1:\(bastion.port)"), bastionDown.output)
    }

    func testAnXinetdStanzaWithSSHDashJRunsUnchanged() throws {
        let keys = ScratchDirectory("keys")
        let known = try knownHosts([bastion, inner], in: keys)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["old": """
            service old
            {
                type        = UNLISTED
                socket_type = stream
                protocol    = tcp
                wait        = no
                port        = \(port)
                server      = /usr/bin/ssh
                server_args = -q -i \(bastion.userKey) -i \(inner.userKey) -o UserKnownHostsFile=\(known) -J \(bastion.user)@127.0.0.1:\(bastion.port) -p \(inner.port) \(inner.user)@127.0.0.1 nc 127.0.0.1 \(echo.port)
                known_hosts = \(known)
                identity_agent = none
            }

            """])
        XCTAssertEqual(try TCP.exchange(port: port, Array("like ssh -J".utf8)), Array("like ssh -J".utf8), tunneld.log)
        XCTAssertEqual(bastion.acceptedLogins, 1)
        XCTAssertEqual(inner.acceptedLogins, 1)
    }

    func testAnSSHConfigAliasWithProxyJumpCarriesAConnectionAndCheckShowsTheChain() throws {
        let home = ScratchDirectory("home")
        try FileManager.default.createDirectory(atPath: home.file(".ssh"), withIntermediateDirectories: true)
        home.write(".ssh/id_bastion", try String(contentsOfFile: bastion.userKey, encoding: .utf8), mode: 0o600)
        home.write(".ssh/id_inner", try String(contentsOfFile: inner.userKey, encoding: .utf8), mode: 0o600)
        home.write(".ssh/known_hosts", try [bastion, inner].map { try String(contentsOfFile: $0.knownHosts, encoding: .utf8) }.joined())
        home.write(".ssh/config", """
            Host *
                UserKnownHostsFile \(home.file(".ssh/known_hosts"))

            Host inner
                HostName 127.0.0.1
                Port \(inner.port)
                User \(inner.user)
                IdentityFile ~/.ssh/id_inner
                ProxyJump gate

            Host gate
                HostName 127.0.0.1
                Port \(bastion.port)
                IdentityFile ~/.ssh/id_bastion

            """)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["alias": """
            service alias
            {
                port            = \(port)
                server          = inner
                ssh_config      = yes
                server_args     = 127.0.0.1 \(echo.port)
                identity_agent  = none
            }

            """], environment: ["HOME": home.path])
        XCTAssertEqual(try TCP.exchange(port: port, Array("alias behind a gate".utf8)), Array("alias behind a gate".utf8), tunneld.log)
        XCTAssertEqual(bastion.acceptedLogins, 1)
        XCTAssertEqual(inner.acceptedLogins, 1)

        let check = try runProgram(TunneldProcess.binary, ["--check", "-f", tunneld.configPath], environment: ["HOME": home.path, "PATH": "/usr/bin:/bin"])
        XCTAssertEqual(check.status, 0, check.output + check.error)
        let me = String(cString: getpwuid(geteuid()).pointee.pw_name)
        XCTAssertTrue(check.output.contains("  jump \(me)@127.0.0.1:\(bastion.port) (ssh_config)"), check.output)
    }
}

/// The final server is reachable only through the jump host: the bastion and the final sshd
/// run in a server namespace, the final sshd on that namespace's own loopback, and tunneld
/// runs in a laptop namespace that reaches the bastion's address alone (documentation
/// addresses, both ends inside namespaces this test made).
final class JumpHostNamespaceTests: XCTestCase {
    func testTheFinalServerIsReachedThroughTheJumpHostOnly() throws {
        if let reason = NetworkNamespaces.unavailableReason { throw XCTSkip(reason) }
        let network = try NetworkNamespaces()
        defer { network.remove() }
        let inServer = network.exec(in: network.server)
        let bastion = try SSHServer(listenAddress: NetworkNamespaces.serverAddress, commandPrefix: inServer)
        let final = try SSHServer(listenAddress: "127.0.0.1", commandPrefix: inServer)
        let keys = ScratchDirectory("keys")
        let known = keys.write("known_hosts", try [bastion, final].map { try String(contentsOfFile: $0.knownHosts, encoding: .utf8) }.joined())
        let port = TCP.freePort()
        // The target is the final sshd's own port, as the final server sees it: a server that
        // speaks first, whose banner the client reads.
        let tunneld = try TunneldProcess(stanzas: ["inside": """
            service inside
            {
                port            = \(port)
                server          = \(final.user)@127.0.0.1:\(final.port)
                jump            = \(bastion.user)@\(NetworkNamespaces.serverAddress):\(bastion.port)
                server_args     = 127.0.0.1 \(final.port)
                identity        = \(bastion.userKey) \(final.userKey)
                identity_agent  = none
                known_hosts     = \(known)
                connect_timeout = 5
            }

            """], wrapper: network.exec(in: network.laptop))

        func firstLine(from port: UInt16) -> String {
            let script = "exec 3<>/dev/tcp/127.0.0.1/\(port) && head -n 1 <&3"
            let command = network.exec(in: network.laptop) + ["/usr/bin/timeout", "5", "/bin/bash", "-c", script]
            guard let result = try? runProgram(command[0], Array(command.dropFirst()), timeout: 10) else { return "(could not run bash)" }
            return result.status == 0 ? result.output : "(nothing, status \(result.status): \(result.error))"
        }
        XCTAssertTrue(firstLine(from: port).hasPrefix("SSH-2.0-OpenSSH"), tunneld.log)
        XCTAssertEqual(bastion.acceptedLogins, 1, tunneld.log)
        XCTAssertEqual(final.acceptedLogins, 1, tunneld.log)
        // From the laptop, the final server's address and port lead nowhere.
        XCTAssertFalse(firstLine(from: final.port).hasPrefix("SSH-2.0"))
        // The final sshd saw its login come from inside its own namespace: from the bastion.
        XCTAssertTrue(final.log.contains("Accepted publickey for \(final.user) from 127.0.0.1"), final.log)
        XCTAssertFalse(final.log.contains(NetworkNamespaces.laptopAddress))
    }
}
