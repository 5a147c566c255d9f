import Foundation
import Glibc
import Logging
import TunnelConfig
import XCTest
@testable import tunneld

/// `log_type` at work: lines to syslog through a test listener, to files with xinetd's limits
/// and reopening after rotation, each service's lines where its stanza says, and
/// `log_on_success` / `log_on_failure` choosing the connection line's fields.
final class LogRoutingTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "tunneld-logs-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func service(_ name: String, logType: LogType? = nil, fields: LogFields = LogFields(onSuccess: ["HOST", "DURATION", "TRAFFIC"], onFailure: ["HOST", "DURATION", "TRAFFIC"])) -> Service {
        Service(name: name, location: SourceLocation(file: "f", line: 1),
                listening: Listening(address: Endpoint(host: "127.0.0.1", port: 1)),
                route: Route(server: Endpoint(host: "h", port: 22), user: "u"),
                forwarding: Forwarding(target: Endpoint(host: "t", port: 25)), logFields: fields, logType: logType)
    }

    private func read(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    private let closed: Logger.Metadata = ["service": "smtp", "peer": "127.0.0.1:5555", "target": "t:25", "via": "u@h:22", "duration": "0.012", "bytes.up": "10", "bytes.down": "20", "result": "ok"]

    func testSyslogGetsTheFacilityThePriorityAndTheText() throws {
        let listener = try FakeJournal(path: directory + "/log")
        let routes = LogRoutes(standardError: LineLogHandler(label: "t"), syslogSocketPath: listener.path)
        var configuration = Configuration()
        configuration.services = [service("smtp", logType: .syslog(facility: SyslogFacility(name: "mail")!, level: .notice))]
        XCTAssertEqual(routes.configure(configuration), [])
        let logger = Logger(label: "t") { _ in LogRouter(routes: routes) }
        logger.info("connection closed", metadata: closed)
        logger.warning("connection closed", metadata: ["service": "smtp", "result": "ssh-failed: down"])
        let first = String(decoding: try XCTUnwrap(listener.receive()), as: UTF8.self)
        let second = String(decoding: try XCTUnwrap(listener.receive()), as: UTF8.self)
        // mail is 2: info lines at the stanza's level (notice, 5) are <21>; a warning (4) is <20>.
        XCTAssertTrue(first.range(of: #"^<21>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d tunneld\[\d+\]: info connection closed bytes.down=20 "#, options: .regularExpression) != nil, first)
        XCTAssertTrue(second.hasPrefix("<20>"), second)
        XCTAssertTrue(second.hasSuffix("tunneld[\(getpid())]: warning connection closed result=\"ssh-failed: down\" service=smtp"), second)
    }

    func testEachServiceWritesWhereItsStanzaSaysAndTheRestWhereDefaultsSay() throws {
        let smtpLog = directory + "/smtp.log"
        let defaultLog = directory + "/tunneld.log"
        let routes = LogRoutes(standardError: LineLogHandler(label: "t"))
        var configuration = Configuration()
        configuration.globals.logType = .file(path: defaultLog, softLimit: nil, hardLimit: nil)
        configuration.services = [service("smtp", logType: .file(path: smtpLog, softLimit: nil, hardLimit: nil)), service("web")]
        XCTAssertEqual(routes.configure(configuration), [])
        let logger = Logger(label: "t") { _ in LogRouter(routes: routes) }
        logger.info("connection closed", metadata: closed)
        logger.info("connection closed", metadata: ["service": "web", "result": "ok"])
        logger.notice("started", metadata: ["services": "2"])
        XCTAssertEqual(read(smtpLog).split(separator: "\n").count, 1)
        XCTAssertTrue(read(smtpLog).contains(" info connection closed bytes.down=20 bytes.up=10 duration=0.012 peer=127.0.0.1:5555 result=ok service=smtp"), read(smtpLog))
        XCTAssertTrue(read(defaultLog).contains("service=web"), read(defaultLog))
        XCTAssertTrue(read(defaultLog).contains(" notice started services=2"), read(defaultLog))
    }

    func testLogOnSuccessAndFailureChooseTheFields() {
        let all = LogFields(onSuccess: ["HOST", "DURATION", "TRAFFIC", "PID", "EXIT", "USERID"], onFailure: ["HOST", "ATTEMPT"])
        XCTAssertEqual(ConnectionLineFields.select(closed, fields: all), closed)
        let hostOnly = ConnectionLineFields.select(closed, fields: LogFields(onSuccess: ["HOST", "PID"], onFailure: []))
        XCTAssertEqual(hostOnly?.keys.sorted(), ["peer", "result", "service", "target", "via"])
        let durationAndTraffic = ConnectionLineFields.select(closed, fields: LogFields(onSuccess: ["DURATION", "TRAFFIC"], onFailure: []))
        XCTAssertEqual(durationAndTraffic?.keys.sorted(), ["bytes.down", "bytes.up", "duration", "result", "service", "target", "via"])
        XCTAssertNil(ConnectionLineFields.select(closed, fields: LogFields(onSuccess: [], onFailure: ["HOST"])), "an empty log_on_success: no line")
        var failed = closed
        failed["result"] = "limit: cps"
        XCTAssertEqual(ConnectionLineFields.select(failed, fields: LogFields(onSuccess: [], onFailure: ["ATTEMPT"]))?.keys.sorted(), ["result", "service", "target", "via"])
        XCTAssertNil(ConnectionLineFields.select(failed, fields: LogFields(onSuccess: ["HOST"], onFailure: [])))
    }

    func testTheRouterTrimsOnlyConnectionLines() throws {
        let smtpLog = directory + "/smtp.log"
        let routes = LogRoutes(standardError: LineLogHandler(label: "t"))
        var configuration = Configuration()
        configuration.services = [service("smtp", logType: .file(path: smtpLog, softLimit: nil, hardLimit: nil), fields: LogFields(onSuccess: ["HOST"], onFailure: []))]
        routes.configure(configuration)
        let logger = Logger(label: "t") { _ in LogRouter(routes: routes) }
        logger.info("connection closed", metadata: closed)
        logger.warning("connection closed", metadata: ["service": "smtp", "peer": "p", "result": "ssh-failed: down"])
        logger.info("session up", metadata: ["service": "smtp", "duration": "1"])
        let lines = read(smtpLog).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, "\(lines)")
        XCTAssertTrue(lines[0].hasSuffix(" info connection closed peer=127.0.0.1:5555 result=ok service=smtp target=t:25 via=u@h:22"), lines[0])
        XCTAssertTrue(lines[1].hasSuffix(" info session up duration=1 service=smtp"), lines[1])
    }

    func testAFileStopsAtItsHardLimitWarnsAtItsSoftLimitAndStartsOverWhenReopened() throws {
        let path = directory + "/limited.log"
        let notices = NoticeBox()
        let file = try LogFile(path: path, softLimit: 100, hardLimit: 300) { notices.add($0) }
        let line = String(repeating: "x", count: 59) + "\n"
        for _ in 0..<10 { file.append(line) }
        let text = read(path)
        let lines = text.split(separator: "\n").map(String.init)
        let softNotice = "# tunneld: log file \(path) is past its soft limit of 100 bytes; rotate it (logrotate, then SIGHUP)"
        // 60-byte lines: the 2nd passes the soft limit and brings its notice; lines go on while they fit under 300.
        let expected = 2 + (300 - 120 - (softNotice.utf8.count + 1)) / 60
        XCTAssertEqual(lines.filter { $0.hasPrefix("xxx") }.count, expected, text)
        XCTAssertEqual(lines[2], softNotice)
        XCTAssertEqual(lines.last, "# tunneld: log file \(path) reached its hard limit of 300 bytes; nothing more is written to it until it is rotated (then send SIGHUP)")
        XCTAssertEqual(notices.all.count, 2)
        XCTAssertEqual(rename(path, path + ".1"), 0)
        XCTAssertNil(file.reopen())
        file.append(line)
        XCTAssertEqual(read(path), line, "a fresh file after rotation, with its limits started over")
        XCTAssertEqual(read(path + ".1"), text, "the rotated file is left alone")
    }

    func testAFileThatCannotBeOpenedIsAProblemAndItsLinesStayWhereTheyWere() {
        let routes = LogRoutes(standardError: LineLogHandler(label: "t"))
        var configuration = Configuration()
        configuration.services = [service("smtp", logType: .file(path: directory + "/no/such/dir/x.log", softLimit: nil, hardLimit: nil))]
        let problems = routes.configure(configuration)
        XCTAssertEqual(problems.count, 1)
        XCTAssertTrue(problems[0].hasPrefix("cannot open log file \(directory!)/no/such/dir/x.log: No such file or directory"), problems[0])
    }
}

/// Notices a log file reported, for tests.
final class NoticeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var notices: [String] = []
    func add(_ notice: String) { lock.lock(); notices.append(notice); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return notices }
}
