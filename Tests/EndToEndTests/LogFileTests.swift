import Foundation
import Glibc
import XCTest

/// `log_type = FILE path`: a service's lines go to its own file, which SIGHUP reopens after
/// logrotate moved it away.
final class LogFileTests: SSHTestCase {
    func testAServiceLogsToItsFileAndSIGHUPReopensItAfterRotation() throws {
        let port = TCP.freePort()
        let scratch = ScratchDirectory("logs")
        let logPath = scratch.file("smtp.log")
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("smtp", port: port, via: sshd, target: echo.port, extra: "log_type = FILE \(logPath)")])
        func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

        XCTAssertEqual(try TCP.exchange(port: port, Array("one".utf8)), Array("one".utf8))
        XCTAssertTrue(waitUntil(timeout: 5) { read(logPath).contains("connection closed") }, "log file: \(read(logPath))\nstderr: \(tunneld.log)")
        XCTAssertTrue(read(logPath).split(separator: "\n").contains { $0.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info connection closed .*result=ok service=smtp"#, options: .regularExpression) != nil }, read(logPath))
        XCTAssertTrue(tunneld.connectionLines(containing: "service=smtp").isEmpty, "the service's lines go to its file only: \(tunneld.log)")

        // logrotate: move the file away, then SIGHUP.
        XCTAssertEqual(rename(logPath, logPath + ".1"), 0)
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded", timeout: 10), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: port, Array("two".utf8)), Array("two".utf8))
        XCTAssertTrue(waitUntil(timeout: 5) { read(logPath).contains("connection closed") }, "a new file after SIGHUP: \(tunneld.log)")
        XCTAssertEqual(read(logPath).components(separatedBy: "connection closed").count - 1, 1, read(logPath))
        XCTAssertEqual(read(logPath + ".1").components(separatedBy: "connection closed").count - 1, 1, "the rotated file keeps the first line only: \(read(logPath + ".1"))")
    }
}
