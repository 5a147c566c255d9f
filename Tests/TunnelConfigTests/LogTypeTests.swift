import XCTest
@testable import TunnelConfig

/// xinetd's `log_type`: SYSLOG facility [level], FILE path [soft [hard]], in defaults and per service.
final class LogTypeTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    func testSyslogFacilityAndLevel() throws {
        XCTAssertEqual(try LogType.parse(["SYSLOG", "daemon"]).get(), .syslog(facility: SyslogFacility(name: "daemon")!, level: .info))
        XCTAssertEqual(try LogType.parse(["syslog", "local3", "warning"]).get(), .syslog(facility: SyslogFacility(name: "local3")!, level: .warning))
        XCTAssertEqual(SyslogFacility(name: "authpriv")?.code, 10)
        XCTAssertEqual(SyslogFacility(name: "local7")?.code, 23)
        XCTAssertEqual(LogType.parse(["SYSLOG", "nosuch"]).failureText?.hasPrefix("log_type SYSLOG facility 'nosuch' is not one of kern, user, mail, daemon"), true)
        XCTAssertEqual(LogType.parse(["SYSLOG", "daemon", "loud"]).failureText, "log_type SYSLOG level 'loud' is not one of emerg, alert, crit, err, warning, notice, info, debug")
        XCTAssertEqual(LogType.parse(["SYSLOG"]).failureText, "log_type SYSLOG takes a facility and an optional level, e.g. log_type = SYSLOG daemon info")
    }

    func testFileWithXinetdsLimits() throws {
        XCTAssertEqual(try LogType.parse(["FILE", "/var/log/t.log"]).get(), .file(path: "/var/log/t.log", softLimit: nil, hardLimit: nil))
        XCTAssertEqual(try LogType.parse(["FILE", "/var/log/t.log", "1M", "2M"]).get(), .file(path: "/var/log/t.log", softLimit: 1 << 20, hardLimit: 2 << 20))
        // Without a hard limit: the soft one plus 1%, at least 5K and at most 20K more.
        XCTAssertEqual(try LogType.parse(["FILE", "/l", "100K"]).get(), .file(path: "/l", softLimit: 102_400, hardLimit: 102_400 + 5 * 1024))
        XCTAssertEqual(try LogType.parse(["FILE", "/l", "1000K"]).get(), .file(path: "/l", softLimit: 1_024_000, hardLimit: 1_024_000 + 10_240))
        XCTAssertEqual(try LogType.parse(["FILE", "/l", "100M"]).get(), .file(path: "/l", softLimit: 100 << 20, hardLimit: (100 << 20) + 20 * 1024))
        XCTAssertEqual(try LogType.parse(["FILE", "/l", "4096"]).get(), .file(path: "/l", softLimit: 4096, hardLimit: 4096 + 5 * 1024))
        XCTAssertEqual(LogType.parse(["FILE", "relative.log"]).failureText, "log_type FILE path 'relative.log' is not absolute; write the full path, e.g. /var/log/tunneld-smtp.log")
        XCTAssertEqual(LogType.parse(["FILE", "/l", "2M", "1M"]).failureText, "log_type FILE hard limit 1M is below the soft limit 2M; make it at least as large")
        XCTAssertEqual(LogType.parse(["FILE", "/l", "lots"]).failureText, "log_type FILE soft limit 'lots' is not a size such as 500K or 10M")
        XCTAssertEqual(LogType.parse(["FILE"]).failureText, "log_type FILE takes a path and up to two size limits, e.g. log_type = FILE /var/log/tunneld-smtp.log 10M")
        XCTAssertEqual(LogType.parse(["JOURNAL"]).failureText, "log_type 'JOURNAL' is not SYSLOG or FILE")
    }

    func testInDefaultsAndPerServiceAndShownByCheck() {
        let (configuration, messages) = fixture.load(text: """
            defaults { log_type = SYSLOG daemon info }
            service a {
            \(minimalBody)
            known_hosts = /dev/null
            }
            service b {
            port = 7778
            server = mail.example.org
            server_args = localhost 80
            known_hosts = /dev/null
            log_type = FILE /var/log/tunneld-b.log 10M
            }
            """)
        XCTAssertFalse(messages.contains { $0.contains("log_type") }, "\(messages)")
        XCTAssertEqual(configuration.globals.logType, .syslog(facility: SyslogFacility(name: "daemon")!, level: .info))
        XCTAssertEqual(configuration.services.map(\.logType), [
            .syslog(facility: SyslogFacility(name: "daemon")!, level: .info),
            .file(path: "/var/log/tunneld-b.log", softLimit: 10 << 20, hardLimit: (10 << 20) + 20 * 1024),
        ])
        let report = CheckReport(configuration).render()
        XCTAssertTrue(report.contains("log_type=syslog:daemon.info"), report)
        XCTAssertTrue(report.contains("log_type=/var/log/tunneld-b.log"), report)
    }

    func testABadLogTypeIsAnErrorOfTheService() {
        let (configuration, messages) = fixture.load(text: "service s {\n\(minimalBody)\nlog_type = FILE tunneld.log\n}\n")
        XCTAssertTrue(configuration.services.isEmpty)
        XCTAssertTrue(messages.contains("ROOT/conf:5: error: s: log_type FILE path 'tunneld.log' is not absolute; write the full path, e.g. /var/log/tunneld-smtp.log"), "\(messages)")
    }

    func testXinetdStanzaWithLogTypeIsNoLongerWarnedAbout() {
        let (_, messages) = fixture.load(text: "service s {\n\(minimalBody)\nlog_type = FILE /var/log/tunneld-smtp.log\nlog_on_success = HOST PID\nlog_on_failure = HOST\n}\n")
        XCTAssertFalse(messages.contains { $0.contains("log_type") }, "\(messages)")
    }
}

private extension Result where Failure == Message {
    var failureText: String? {
        if case .failure(let message) = self { return "\(message)" }
        return nil
    }
}
