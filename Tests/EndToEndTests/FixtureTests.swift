import Foundation
import Glibc
import XCTest

/// The fixtures themselves, proved with OpenSSH's own client, so that a tunnel test that
/// fails points at tunneld and not at the harness.
final class FixtureTests: XCTestCase {
    func testSSHDAcceptsTheUserKeyAndCountsLogins() throws {
        let sshd = try SSHServer()
        let result = try runProgram("/usr/bin/ssh", [
            "-i", sshd.userKey, "-p", "\(sshd.port)", "-o", "UserKnownHostsFile=\(sshd.knownHosts)",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "\(sshd.user)@127.0.0.1", "echo", "logged-in",
        ])
        XCTAssertEqual(result.output.trimmingCharacters(in: .whitespacesAndNewlines), "logged-in", result.error)
        XCTAssertTrue(waitUntil(timeout: 5) { sshd.acceptedLogins == 1 }, sshd.log)
    }

    func testEchoServerEchoesAndHalfCloses() throws {
        let echo = try EchoServer()
        let bytes = randomBytes(1 << 20)
        XCTAssertEqual(try TCP.exchange(port: echo.port, bytes), bytes)
        XCTAssertEqual(echo.connectionCount, 1)
    }
}
