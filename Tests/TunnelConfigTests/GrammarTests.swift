import XCTest
@testable import TunnelConfig

final class GrammarTests: XCTestCase {
    private func parse(_ text: String) -> (items: [Item], messages: [String]) {
        let result = Parser.parse(text, file: "f")
        return (result.items, result.diagnostics.map(\.description))
    }

    func testBraceOnItsOwnLineOrOnTheHeader() {
        let alone = parse("service smtp\n{\n port = 25\n}\n")
        let header = parse("service smtp {\n port = 25\n}\n")
        XCTAssertEqual(alone.items, [.service(name: "smtp", assignments: [Assignment(name: "port", op: .set, values: ["25"], line: 3)], line: 1)])
        XCTAssertEqual(header.items.count, 1)
        XCTAssertTrue(alone.messages.isEmpty && header.messages.isEmpty)
    }

    func testAStanzaOnOneLineParsesTheSameAsOnMany() {
        let many = parse("""
            service smtp
            {
                port = 7777
                server = mail.example.org
                server_args = localhost 25
            }
            """)
        let one = parse("service smtp { port = 7777 server = mail.example.org server_args = localhost 25 }")
        func strip(_ items: [Item]) -> [[String]] {
            items.flatMap { item -> [[String]] in
                guard case .service(_, let assignments, _) = item else { return [] }
                return assignments.map { [$0.name, $0.op.rawValue] + $0.values }
            }
        }
        XCTAssertEqual(strip(one.items), strip(many.items))
        XCTAssertEqual(strip(one.items), [["port", "=", "7777"], ["server", "=", "mail.example.org"], ["server_args", "=", "localhost", "25"]])
    }

    func testOperatorsAndGluedAssignmentsAtLineStart() {
        let result = parse("""
            defaults
            {
                only_from += 10.0.0.0/8
                only_from -= 10.0.0.0/8
                port=25
            }
            """)
        guard case .defaults(let assignments, _) = result.items.first else { return XCTFail("\(result)") }
        XCTAssertEqual(assignments.map(\.op), [.add, .remove, .set])
        XCTAssertEqual(assignments.last?.values, ["25"])
    }

    func testAGluedEqualsInsideAValueStaysAValue() {
        let result = parse("service s {\n server_args = -o Port=2222 host nc localhost 25\n}")
        guard case .service(_, let assignments, _) = result.items.first else { return XCTFail() }
        XCTAssertEqual(assignments.first?.values, ["-o", "Port=2222", "host", "nc", "localhost", "25"])
    }

    func testCommentsAtLineStartOrAfterWhitespace() {
        let result = parse("""
            # a comment
            service smtp # trailing comment
            {
                server_args = localhost 25 # the target
                fingerprint = SHA256:abc#def
            }
            """)
        guard case .service(_, let assignments, _) = result.items.first else { return XCTFail() }
        XCTAssertEqual(assignments[0].values, ["localhost", "25"])
        XCTAssertEqual(assignments[1].values, ["SHA256:abc#def"])
    }

    func testIncludesAndDefaults() {
        let result = parse("include other.conf\nincludedir conf.d\ndefaults { linger = 5 }")
        XCTAssertEqual(result.items, [
            .include(path: "other.conf", line: 1),
            .includeDirectory(path: "conf.d", line: 2),
            .defaults(assignments: [Assignment(name: "linger", op: .set, values: ["5"], line: 3)], line: 3),
        ])
    }

    func testErrorsAreLocatedAndOneMistakeGivesOneMessage() {
        XCTAssertEqual(parse("service smtp {\n port 25\n server = x\n}").messages, ["f:2: error: smtp: expected '=' after 'port': write port = VALUE"])
        XCTAssertEqual(parse("service smtp {\n port = 25\n").messages, ["f:1: error: smtp: service smtp has no closing }; add } after its last attribute"])
        XCTAssertEqual(parse("service smtp\n port = 25\n}").messages.first, "f:2: error: smtp: expected { after service smtp")
        XCTAssertEqual(parse("bogus = 1\nservice a { port = 1 }\n").messages, ["f:1: error: unexpected 'bogus' outside a stanza; a stanza starts with service NAME, defaults, include or includedir"])
        XCTAssertEqual(parse("bogus = 1\n").messages, ["f:1: error: f is not a configuration file (it does not start with service, defaults, include or includedir); its content is not shown"], "a file with no stanza at all is not quoted: it may be a secret")
        XCTAssertEqual(parse("service {\n}").messages, ["f:1: error: service needs a name: service NAME { … }"])
        XCTAssertEqual(parse("service a {\n port = 1\n {\n}").messages, ["f:3: error: a: unexpected { inside service a; is a } missing before it?"])
    }

    func testAttributeNamesAreCaseInsensitive() {
        let result = parse("service s {\n Port = 25\n}")
        guard case .service(_, let assignments, _) = result.items.first else { return XCTFail() }
        XCTAssertEqual(assignments.first?.name, "port")
    }
}
