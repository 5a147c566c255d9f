import Foundation
import Glibc
import XCTest

/// `ssh_config = yes`: `server` is a Host alias from HOME's ~/.ssh/config, resolved by
/// `ssh -G`, carrying connections through a real sshd (issue 14).
final class SSHConfigAliasTests: SSHTestCase {
    func testAnAliasFromHOMEsSSHConfigCarriesAConnectionAndCheckShowsWhereEachValueCameFrom() throws {
        let home = ScratchDirectory("home")
        try FileManager.default.createDirectory(atPath: home.file(".ssh"), withIntermediateDirectories: true)
        let key = try String(contentsOfFile: sshd.userKey, encoding: .utf8)
        home.write(".ssh/id_alias", key, mode: 0o600)
        home.write(".ssh/known_hosts_alias", try String(contentsOfFile: sshd.knownHosts, encoding: .utf8))
        home.write(".ssh/config", """
            Host mailrelay
                HostName 127.0.0.1
                Port \(sshd.port)
                User \(sshd.user)
                IdentityFile ~/.ssh/id_alias
                UserKnownHostsFile ~/.ssh/known_hosts_alias
                ConnectTimeout 4

            """)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["alias": """
            service alias
            {
                port            = \(port)
                server          = mailrelay
                ssh_config      = yes
                server_args     = 127.0.0.1 \(echo.port)
                identity_agent  = none
            }

            """], environment: ["HOME": home.path])
        XCTAssertEqual(try TCP.exchange(port: port, Array("via an alias".utf8)), Array("via an alias".utf8), tunneld.log)
        XCTAssertTrue(tunneld.waitForLog("result=ok", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("via=\(sshd.user)@127.0.0.1:\(sshd.port)"), tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 1)

        let check = try runProgram(TunneldProcess.binary, ["--check", "-f", tunneld.configPath], environment: ["HOME": home.path, "PATH": "/usr/bin:/bin"])
        XCTAssertEqual(check.status, 0, check.output + check.error)
        // ssh -G cannot tell a User equal to ssh's own default (the local account) from none.
        let userSource = sshd.user == String(cString: getpwuid(geteuid()).pointee.pw_name) ? "default" : "ssh_config"
        XCTAssertTrue(check.output.contains("""
            alias: server mailrelay resolved by ssh -G -F \(home.file(".ssh/config")):
              hostname 127.0.0.1 (ssh_config)
              port \(sshd.port) (ssh_config)
              user \(sshd.user) (\(userSource))
              identity \(home.file(".ssh/id_alias")) (ssh_config)
              known_hosts \(home.file(".ssh/known_hosts_alias")) (ssh_config)
              host_key strict (default)
              connect_timeout 4 (ssh_config)
              keepalive 15 3 (default)
            """), check.output + check.error)
    }
}
