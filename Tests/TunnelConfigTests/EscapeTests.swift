import XCTest
@testable import TunnelConfig

/// Text from outside never reaches a log line or a terminal raw (issue 22): bidi controls,
/// which make a name read backwards, are escaped like other controls.
final class EscapeTests: XCTestCase {
    func testBidiControlsAreEscaped() {
        XCTAssertEqual(ControlCharacters.escaped("user\u{202E}gnp.exe"), "user\\u{202e}gnp.exe")
        for value in Array(0x202A...0x202E) + Array(0x2066...0x2069) {
            let scalar = Unicode.Scalar(UInt32(value))!
            XCTAssertTrue(ControlCharacters.isControl(scalar), "U+\(String(value, radix: 16))")
            XCTAssertFalse(ControlCharacters.escaped("a" + String(scalar) + "b").unicodeScalars.contains(scalar))
        }
        XCTAssertEqual(ControlCharacters.escaped("caf\u{E9} \u{200F}"), "caf\u{E9} \u{200F}", "letters and marks that reorder nothing stay")
    }
}
