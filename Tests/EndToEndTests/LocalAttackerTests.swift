import Foundation
import Glibc
import XCTest

/// What another account on the same machine can do to a daemon run by root (issue 22).
final class LocalAttackerTests: SSHTestCase {
    /// Whether a client of `port` gets its bytes back through the tunnel.
    private func echoes(_ port: UInt16) -> Bool {
        (try? TCP.exchange(port: port, Array("ping".utf8), timeout: 10)) == Array("ping".utf8)
    }

    /// A stanza that another account can write is refused at start and on reload, and the
    /// services of the other files run; once it is fixed, a reload adds it.
    func test01_AnOtherWritableStanzaIsRefusedAndTheOthersRun() throws {
        let outside = ScratchDirectory("writable")
        let goodPort = TCP.freePort()
        let includedPort = TCP.freePort()
        let included = outside.write("included", stanza("included", port: includedPort, via: sshd, target: echo.port), mode: 0o666)
        chmod(included, 0o666)
        let tunneld = try TunneldProcess(stanzas: [
            "good": stanza("good", port: goodPort, via: sshd, target: echo.port),
            "includer": "include \(included)\n",
        ])
        XCTAssertTrue(tunneld.log.contains("error: \(included): writable by group and others: refused; chmod go-w \(included)"), tunneld.log)
        XCTAssertTrue(echoes(goodPort), tunneld.log)
        XCTAssertThrowsError(try TCP.connect(port: includedPort, timeout: 1), "the refused file's service does not listen")

        let dropped = tunneld.directory.write("services.d/dropped", stanza("dropped", port: TCP.freePort(), via: sshd, target: echo.port))
        chmod(dropped, 0o646)
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded:", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("error: \(dropped): writable by others: refused"), tunneld.log)
        XCTAssertFalse(tunneld.log.contains("reload refused"), "the refused file is skipped, the reload goes on: \(tunneld.log)")
        XCTAssertTrue(echoes(goodPort), tunneld.log)

        chmod(included, 0o644)
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded:", count: 2, timeout: 5), tunneld.log)
        XCTAssertTrue(echoes(includedPort), tunneld.log)
        XCTAssertEqual(tunneld.terminate(), 0)
    }

    /// A private key named as password_file is never sent: --check refuses it.
    func test02_APrivateKeyGivenAsPasswordFileIsRefused() throws {
        let directory = ScratchDirectory("keypw")
        let config = directory.write("services.d/s", stanza("s", port: TCP.freePort(), via: sshd, target: echo.port, extra: "    password_file = \(sshd.userKey)"))
        let check = try runProgram(TunneldProcess.binary, ["--check", "-f", (config as NSString).deletingLastPathComponent])
        XCTAssertNotEqual(check.status, 0)
        XCTAssertTrue(check.output.contains("password_file \(sshd.userKey) looks like a private key, not a password: refused"), check.output + check.error)
        XCTAssertFalse((check.output + check.error).contains("PRIVATE KEY"))
    }
}
