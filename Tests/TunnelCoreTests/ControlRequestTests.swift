import XCTest
@testable import TunnelCore

/// The control socket's requests are values (issue 19).
final class ControlRequestTests: XCTestCase {
    func testEachRequestParsesAndAnythingElseIsUnknown() {
        XCTAssertEqual(ControlRequest(parsing: "status"), .status(.table))
        XCTAssertEqual(ControlRequest(parsing: "status json"), .status(.json))
        XCTAssertEqual(ControlRequest(parsing: "status prometheus"), .status(.prometheus))
        XCTAssertEqual(ControlRequest(parsing: "reconnect"), .reconnect([]))
        XCTAssertEqual(ControlRequest(parsing: "reconnect smtp imap"), .reconnect(["smtp", "imap"]))
        XCTAssertNil(ControlRequest(parsing: "status xml"))
        XCTAssertNil(ControlRequest(parsing: "shutdown"))
        XCTAssertTrue(ControlRequest.unknown("shutdown").hasPrefix("unknown request 'shutdown'"))
    }
}
