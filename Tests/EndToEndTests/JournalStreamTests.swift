import Foundation
import Glibc
import XCTest

/// Under systemd with standard error to the journal (`JOURNAL_STREAM` names it) and no
/// journal socket to write entries to, each line carries its syslog priority as `<N>` and no
/// timestamp; without `JOURNAL_STREAM`, lines stay as they were.
final class JournalStreamTests: XCTestCase {
    func testLinesCarryTheirPriorityWhenStandardErrorIsTheJournal() throws {
        try XCTSkipIf(FileManager.default.fileExists(atPath: "/run/systemd/journal/socket"),
                      "a journal runs here: tunneld would write native entries to it")
        let sshd = try SSHServer()
        sshd.stop()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("mail", port: port, via: sshd, target: 25)], journalStream: true)
        let fd = try TCP.connect(port: port, timeout: 5)
        _ = try TCP.readAll(fd)
        close(fd)
        XCTAssertTrue(tunneld.waitForLog("connection closed", timeout: 5), tunneld.log)
        let lines = tunneld.logLines
        XCTAssertTrue(lines.contains("<5>notice started services=1"), tunneld.log)
        XCTAssertTrue(lines.contains { $0.hasPrefix("<4>warning connection closed ") && $0.contains("service=mail") }, tunneld.log)
        XCTAssertTrue(lines.allSatisfy { $0.range(of: #"^<[0-7]>[a-z]+ "#, options: .regularExpression) != nil }, tunneld.log)
    }

    func testWithoutJournalStreamLinesKeepTheirTimestamp() throws {
        let sshd = try SSHServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("mail", port: port, via: sshd, target: 25)])
        XCTAssertTrue(tunneld.logLines.contains { $0.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z notice started"#, options: .regularExpression) != nil }, tunneld.log)
    }
}
