import Foundation
import Glibc
import XCTest

/// A client that cannot have its tunnel is told why in its own protocol, and real clients show
/// it: msmtp prints the 421, curl the 502's body. The cause here is the simplest to make: the
/// SSH server's port is closed.
final class RefusalTests: XCTestCase {
    /// tunneld with one service of `refusal = kind` whose sshd has stopped; returns it and the port.
    private func refusingService(_ kind: String) throws -> (TunneldProcess, UInt16, SSHServer) {
        let sshd = try SSHServer()
        sshd.stop()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("mail", port: port, via: sshd, target: 25, extra: "refusal = \(kind)")])
        return (tunneld, port, sshd)
    }

    func testMsmtpPrintsThe421WithTheReason() throws {
        let (tunneld, port, sshd) = try refusingService("smtp")
        let scratch = ScratchDirectory("msmtp")
        let mail = scratch.write("mail", "Subject: test\n\nhello\n")
        let started = Date()
        let result = try runProgram("/bin/sh", ["-c", "msmtp --file=/dev/null --host=127.0.0.1 --port=\(port) --auth=off --tls=off --from=a@example.org b@example.org < \(mail)"], timeout: 20)
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.error.contains("421 4.4.0 tunneld mail: ssh-failed: "), result.error)
        XCTAssertTrue(result.error.contains("127.0.0.1:\(sshd.port)"), "the reason names the server: \(result.error)")
        XCTAssertLessThan(Date().timeIntervalSince(started), 6, "msmtp is answered, not left waiting")
        XCTAssertTrue(tunneld.waitForLog("result=\"ssh-failed:", timeout: 5), tunneld.log)
    }

    func testCurlPrintsThe502Body() throws {
        let (tunneld, port, sshd) = try refusingService("http")
        let result = try runProgram("/usr/bin/curl", ["-sS", "--max-time", "15", "-w", "\\n%{http_code}", "http://127.0.0.1:\(port)/"], timeout: 20)
        XCTAssertEqual(result.status, 0, result.error)
        XCTAssertTrue(result.output.hasPrefix("tunneld mail: ssh-failed: "), result.output)
        XCTAssertTrue(result.output.contains("127.0.0.1:\(sshd.port)"), result.output)
        XCTAssertTrue(result.output.hasSuffix("\n502"), result.output)
        _ = tunneld
    }

    func testPOP3AndIMAPGetOneLineThenTheClose() throws {
        for (kind, prefix) in [("pop3", "-ERR tunneld mail: ssh-failed: "), ("imap", "* BYE tunneld mail: ssh-failed: ")] {
            let (tunneld, port, _) = try refusingService(kind)
            let fd = try TCP.connect(port: port, timeout: 5)
            defer { close(fd) }
            let reply = String(decoding: try TCP.readAll(fd), as: UTF8.self)
            XCTAssertTrue(reply.hasPrefix(prefix) && reply.hasSuffix("\r\n"), "\(kind): \(reply)")
            XCTAssertEqual(reply.utf8.filter { $0 == 10 }.count, 1, "\(kind): one line: \(reply)")
            _ = tunneld
        }
    }

    func testALimitIsExplainedWhileTheLiveConnectionGoesOn() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("mail", port: port, via: sshd, target: echo.port, extra: "refusal = smtp\ninstances = 1")])
        let live = try TCP.connect(port: port, timeout: 10)
        defer { close(live) }
        try TCP.sendAll(live, Array("one\n".utf8))
        XCTAssertEqual(try TCP.readLine(live), "one\n")
        let refused = try TCP.connect(port: port, timeout: 10)
        defer { close(refused) }
        XCTAssertEqual(try TCP.readLine(refused), "421 4.4.0 tunneld mail: limit: instances\r\n")
        try TCP.sendAll(refused, Array("QUIT\r\n".utf8))
        XCTAssertEqual(String(decoding: try TCP.readAll(refused), as: UTF8.self), "221 2.0.0 tunneld mail: limit: instances\r\n")
        try TCP.sendAll(live, Array("two\n".utf8))
        XCTAssertEqual(try TCP.readLine(live), "two\n", "the live connection is untouched")
        _ = tunneld
    }

    func testWithoutRefusalTheClientIsClosedWithoutAWord() throws {
        let (tunneld, port, _) = try refusingService("none")
        let fd = try TCP.connect(port: port, timeout: 5)
        defer { close(fd) }
        XCTAssertEqual(try TCP.readAll(fd), [])
        _ = tunneld
    }
}
