import XCTest
@testable import TunnelConfig

/// `refusal = smtp|pop3|imap|http|none`: per service and in defaults, shown by `--check`.
final class RefusalAttributeTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    func testDefaultIsNoneAndEachProtocolIsTaken() {
        XCTAssertEqual(fixture.load(text: "service s {\n\(minimalBody)\n}\n").0.services.first?.refusal, RefusalProtocol.none)
        for name in ["smtp", "pop3", "imap", "http", "none", "SMTP"] {
            let (configuration, messages) = fixture.load(text: "service s {\n\(minimalBody)\nrefusal = \(name)\n}\n")
            XCTAssertEqual(configuration.services.first?.refusal.rawValue, name.lowercased(), "\(messages)")
        }
    }

    func testDefaultsSetItAndAServiceOverridesIt() {
        let (configuration, messages) = fixture.load(text: """
            defaults { refusal = smtp }
            service a {
            \(minimalBody)
            }
            service b {
            port = 7778
            server = mail.example.org
            server_args = localhost 80
            refusal = http
            }
            """)
        XCTAssertEqual(configuration.services.map(\.refusal), [.smtp, .http], "\(messages)")
    }

    func testAnUnknownProtocolIsAnErrorNamingTheChoices() {
        let (configuration, messages) = fixture.load(text: "service s {\n\(minimalBody)\nrefusal = ftp\n}\n")
        XCTAssertTrue(configuration.services.isEmpty)
        XCTAssertTrue(messages.contains("ROOT/conf:5: error: s: refusal 'ftp' is not one of none, smtp, pop3, imap, http"), "\(messages)")
    }

    func testASocksServiceIgnoresItWithAWarning() {
        let (configuration, messages) = fixture.load(text: "service s {\nport = 1080\nserver = h\ntype = SOCKS\nrefusal = smtp\n}\n")
        XCTAssertEqual(configuration.services.first?.refusal, RefusalProtocol.none, "\(messages)")
        XCTAssertTrue(messages.contains { $0.contains("refusal = smtp has no meaning for a SOCKS service") }, "\(messages)")
    }

    func testCheckShowsIt() {
        let (configuration, _) = fixture.load(text: "service s {\n\(minimalBody)\nrefusal = smtp\nknown_hosts = /dev/null\n}\n")
        XCTAssertTrue(CheckReport(configuration).render().contains("refusal=smtp"), CheckReport(configuration).render())
    }
}
