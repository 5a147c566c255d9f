import TunnelConfig
import XCTest
@testable import TunnelCore

/// The status table is text from outside (server messages) shown on a terminal: controls and
/// bidi overrides are escaped (issue 22).
final class StatusTableTests: XCTestCase {
    func testABidiOverrideInALastErrorIsEscaped() {
        let service = StatusReport.ServiceStatus(
            name: "mail", listen: "127.0.0.1:7777", via: "u@h:22", target: "localhost:25", session: .idle, sessionsUp: 0,
            retryAt: nil, connectError: "h says \u{202E}deretsiger\u{2066}", connectErrorAt: nil, liveConnections: 0, totalConnections: 1,
            bytesUp: 0, bytesDown: 0, refusals: [:], lastError: "refused: \u{1b}[2Jcleared", lastErrorAt: nil)
        let table = StatusReport(pid: 1, startedAt: "2026-12-06T00:00:00Z", services: [service]).table()
        XCTAssertTrue(table.contains("h says \\u{202e}deretsiger\\u{2066}"), table)
        XCTAssertTrue(table.contains("refused: \\x1b[2Jcleared"), table)
        XCTAssertFalse(table.unicodeScalars.contains { $0 != "\n" && ControlCharacters.isControl($0) }, table.debugDescription)
        XCTAssertTrue(table.hasSuffix("\n"), "lines still end")
    }
}
