import XCTest
import TunnelConfig
@testable import TunnelCore

/// The bytes a refused client is told, per protocol: greetings, SMTP's answers to commands,
/// HTTP's wait for the request head, and the reason's escaping and bound.
final class RefusalConversationTests: XCTestCase {
    private func text(_ step: RefusalConversation.Step) -> String {
        switch step {
        case .reply(let bytes): return "reply:" + String(decoding: bytes, as: UTF8.self)
        case .finish(let bytes): return "finish:" + String(decoding: bytes, as: UTF8.self)
        }
    }

    func testSMTPGreetsWith421AndAnswersEachCommandUntilQUIT() {
        var smtp = RefusalConversation(kind: .smtp, reason: "tunneld smtp: ssh-failed: cannot connect")
        XCTAssertEqual(text(smtp.opening()), "reply:421 4.4.0 tunneld smtp: ssh-failed: cannot connect\r\n")
        XCTAssertEqual(text(smtp.received(Array("EHLO laptop\r\nMAIL FROM:<a@b>\r\nRCPT".utf8))),
                       "reply:421 4.4.0 tunneld smtp: ssh-failed: cannot connect\r\n421 4.4.0 tunneld smtp: ssh-failed: cannot connect\r\n")
        XCTAssertEqual(text(smtp.received(Array(" TO:<c@d>\n".utf8))), "reply:421 4.4.0 tunneld smtp: ssh-failed: cannot connect\r\n", "a command split across reads, ended by a bare LF")
        XCTAssertEqual(text(smtp.received(Array(" quit \r\n".utf8))), "finish:221 2.0.0 tunneld smtp: ssh-failed: cannot connect\r\n")
        XCTAssertTrue(smtp.isFinished)
        XCTAssertEqual(text(smtp.received(Array("NOOP\r\n".utf8))), "finish:")
    }

    func testSMTPGivesUpAfterMaxCommands() {
        var smtp = RefusalConversation(kind: .smtp, reason: "r")
        _ = smtp.opening()
        let flood = Array(String(repeating: "NOOP\r\n", count: 20).utf8)
        XCTAssertEqual(text(smtp.received(flood)), "finish:" + String(repeating: "421 4.4.0 r\r\n", count: RefusalConversation.maxCommands))
    }

    func testSMTPCountsAnOverlongLineAsACommandAndKeepsNoMoreOfIt() {
        var smtp = RefusalConversation(kind: .smtp, reason: "r")
        _ = smtp.opening()
        let long = [UInt8](repeating: UInt8(ascii: "A"), count: RefusalConversation.maxLineBytes + 10)
        XCTAssertEqual(text(smtp.received(long)), "reply:421 4.4.0 r\r\n")
    }

    func testPOP3AndIMAPSayItOnceAndClose() {
        var pop3 = RefusalConversation(kind: .pop3, reason: "tunneld pop: limit: instances")
        XCTAssertEqual(text(pop3.opening()), "finish:-ERR tunneld pop: limit: instances\r\n")
        var imap = RefusalConversation(kind: .imap, reason: "tunneld imap: refused: connect failed")
        XCTAssertEqual(text(imap.opening()), "finish:* BYE tunneld imap: refused: connect failed\r\n")
    }

    func testHTTPReadsTheHeadThenAnswers502WithTheReasonAsText() {
        var http = RefusalConversation(kind: .http, reason: "tunneld web: ssh-failed: host key changed")
        XCTAssertEqual(text(http.opening()), "reply:")
        XCTAssertEqual(text(http.received(Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8))), "reply:")
        XCTAssertEqual(text(http.received(Array("\r\n".utf8))),
                       "finish:HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Length: 42\r\nConnection: close\r\n\r\ntunneld web: ssh-failed: host key changed\n")
        var head = RefusalConversation(kind: .http, reason: "r")
        _ = head.opening()
        XCTAssertEqual(text(head.received(Array("HEAD / HTTP/1.0\n\n".utf8))),
                       "finish:HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", "no body for HEAD")
    }

    func testHTTPAnswersAnyway_OnEOFOrAnOverlongHead() {
        var closed = RefusalConversation(kind: .http, reason: "r")
        _ = closed.opening()
        _ = closed.received(Array("GET / HTTP/1.1\r\n".utf8))
        XCTAssertTrue(text(closed.ended()).hasPrefix("finish:HTTP/1.1 502 Bad Gateway\r\n"))
        var long = RefusalConversation(kind: .http, reason: "r")
        _ = long.opening()
        XCTAssertTrue(text(long.received([UInt8](repeating: 65, count: RefusalConversation.maxHeadBytes + 100))).hasPrefix("finish:HTTP/1.1 502"))
    }

    func testTheReasonIsOneBoundedLineOfPrintableASCII() {
        let escaped = RefusalConversation(kind: .pop3, reason: "evil\r\n+OK fake\u{1b}[2J é")
        XCTAssertEqual(escaped.reason, "evil\\r\\n+OK fake\\x1b[2J ?")
        let long = RefusalConversation(kind: .smtp, reason: String(repeating: "x", count: 1000))
        XCTAssertEqual(long.reason.utf8.count, RefusalConversation.maxReasonBytes)
        XCTAssertTrue(long.reason.hasSuffix("..."))
    }

    func testWhichOutcomesAreRefusalsAndWhatTheySay() {
        XCTAssertEqual(RefusalConversation.reason(for: .sshFailed("cannot connect to h:22: Connection refused"), service: "smtp"),
                       "tunneld smtp: ssh-failed: cannot connect to h:22: Connection refused")
        XCTAssertEqual(RefusalConversation.reason(for: .refused("administratively prohibited"), service: "smtp"), "tunneld smtp: refused: administratively prohibited")
        XCTAssertEqual(RefusalConversation.reason(for: .limit(.perSource), service: "smtp"), "tunneld smtp: limit: per_source")
        XCTAssertEqual(RefusalConversation.reason(for: .access("no_access 192.0.2.0/24"), service: "smtp"), "tunneld smtp: access denied", "the refused client is not told the rule")
        XCTAssertNil(RefusalConversation.reason(for: .ok, service: "smtp"))
        XCTAssertNil(RefusalConversation.reason(for: .shutdown, service: "smtp"))
        XCTAssertNil(RefusalConversation.reason(for: .clientError("reset"), service: "smtp"))
    }
}
