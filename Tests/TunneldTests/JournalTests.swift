import Foundation
import Glibc
import Logging
import XCTest
@testable import tunneld

/// Logging to the journal: the native protocol's field encoding, entries received by a fake
/// journal (a datagram socket the test binds), `JOURNAL_STREAM` detection, and `<N>` lines.
final class JournalTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "tunneld-journal-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func testFieldsAreNameEqualsValueAndAValueWithANewlineHasItsLengthInstead() {
        let entry = JournalEntry([("MESSAGE", "hello"), ("TUNNELD_RESULT", "ssh-failed: a\nb")])
        var expected = Array("MESSAGE=hello\nTUNNELD_RESULT\n".utf8)
        expected += [15, 0, 0, 0, 0, 0, 0, 0]
        expected += Array("ssh-failed: a\nb\n".utf8)
        XCTAssertEqual(entry.encoded, expected)
    }

    func testMetadataKeysBecomeTunneldFields() {
        XCTAssertEqual(JournalEntry.fieldName(forMetadataKey: "service"), "TUNNELD_SERVICE")
        XCTAssertEqual(JournalEntry.fieldName(forMetadataKey: "bytes.up"), "TUNNELD_BYTES_UP")
        XCTAssertEqual(JournalEntry.fieldName(forMetadataKey: "ssh-host é"), "TUNNELD_SSH_HOST__")
        XCTAssertEqual(JournalEntry.fieldName(forMetadataKey: String(repeating: "k", count: 100)).count, 64)
    }

    func testAConnectionLineBecomesAnEntryWithPriorityAndFields() throws {
        let journal = try FakeJournal(path: directory + "/socket")
        let socket = try XCTUnwrap(JournalSocket(path: journal.path))
        var handler = JournalLogHandler(label: "tunneld", socket: socket)
        handler.logLevel = .info
        let logger = Logger(label: "tunneld") { _ in handler }
        logger.warning("connection closed", metadata: ["service": "smtp", "peer": "127.0.0.1:5555", "result": "ssh-failed: cannot connect\nto mail"])
        let fields = try journal.receiveFields()
        XCTAssertEqual(fields["PRIORITY"], "4")
        XCTAssertEqual(fields["SYSLOG_IDENTIFIER"], "tunneld")
        XCTAssertEqual(fields["TUNNELD_SERVICE"], "smtp")
        XCTAssertEqual(fields["TUNNELD_PEER"], "127.0.0.1:5555")
        XCTAssertEqual(fields["TUNNELD_RESULT"], "ssh-failed: cannot connect\nto mail", "a value with a newline arrives whole, through the length form")
        XCTAssertEqual(fields["MESSAGE"], "warning connection closed peer=127.0.0.1:5555 result=\"ssh-failed: cannot connect\\nto mail\" service=smtp")
        XCTAssertEqual(fields["CODE_FILE"].map { $0.hasSuffix("JournalTests.swift") }, true)
    }

    func testWhatTheJournalDoesNotTakeGoesToTheFallbackAsAPriorityLine() throws {
        let journal = try FakeJournal(path: directory + "/socket")
        let socket = try XCTUnwrap(JournalSocket(path: journal.path))
        journal.close()
        try? FileManager.default.removeItem(atPath: journal.path)
        var pipeEnds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&pipeEnds), 0)
        let handler = JournalLogHandler(label: "tunneld", socket: socket, fallbackDescriptor: pipeEnds[1])
        Logger(label: "tunneld") { _ in handler }.error("session connect failed", metadata: ["service": "smtp"])
        close(pipeEnds[1])
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = read(pipeEnds[0], &buffer, buffer.count)
        close(pipeEnds[0])
        XCTAssertEqual(String(decoding: buffer[0..<max(count, 0)], as: UTF8.self), "<3>error session connect failed service=smtp\n")
    }

    func testNoSocketMeansNoJournal() {
        XCTAssertNil(JournalSocket(path: directory + "/nothing-here"))
    }

    func testJournalStreamMustNameTheDescriptor() throws {
        let file = directory + "/stderr"
        FileManager.default.createFile(atPath: file, contents: nil)
        let fd = open(file, O_WRONLY)
        defer { close(fd) }
        var status = stat()
        XCTAssertEqual(fstat(fd, &status), 0)
        XCTAssertTrue(LogDestination.isJournalStream("\(status.st_dev):\(status.st_ino)", descriptor: fd))
        XCTAssertFalse(LogDestination.isJournalStream("\(status.st_dev):\(status.st_ino + 1)", descriptor: fd))
        XCTAssertFalse(LogDestination.isJournalStream(nil, descriptor: fd))
        XCTAssertFalse(LogDestination.isJournalStream("garbage", descriptor: fd))
    }

    func testUnderTheJournalWithoutItsSocketLinesCarryTheirPriorityAndNoTimestamp() {
        let handler = LineLogHandler(label: "tunneld", style: .syslogPriority)
        let event = LogEvent(level: .warning, message: "connection closed", metadata: ["result": "limit: cps"], source: "t", file: "f", function: "g", line: 1)
        XCTAssertEqual(handler.line(for: event), "<4>warning connection closed result=\"limit: cps\"\n")
        let plain = LineLogHandler(label: "tunneld").line(for: event)
        XCTAssertTrue(plain.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warning connection closed result="limit: cps"\n$"#, options: .regularExpression) != nil, plain)
        XCTAssertEqual(SyslogPriority(.debug).rawValue, 7)
        XCTAssertEqual(SyslogPriority(.notice).rawValue, 5)
        XCTAssertEqual(SyslogPriority(.critical).rawValue, 2)
    }
}

/// A datagram socket bound where a journal's would be; parses what arrives.
final class FakeJournal {
    let path: String
    private var fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0 else { throw NSError(domain: "bind \(path)", code: Int(errno)) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// The next datagram, or nil after 5 s.
    func receive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count < 0 ? nil : Array(buffer[0..<count])
    }

    /// The next datagram's fields, decoded by the native protocol's rules.
    func receiveFields() throws -> [String: String] {
        guard let bytes = receive() else { throw NSError(domain: "no datagram", code: 0) }
        return try Self.decode(bytes)
    }

    static func decode(_ bytes: [UInt8]) throws -> [String: String] {
        var fields: [String: String] = [:]
        var index = 0
        while index < bytes.count {
            guard let end = bytes[index...].firstIndex(where: { $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\n") }) else { throw NSError(domain: "truncated", code: 0) }
            let name = String(decoding: bytes[index..<end], as: UTF8.self)
            if bytes[end] == UInt8(ascii: "=") {
                let lineEnd = bytes[end...].firstIndex(of: UInt8(ascii: "\n"))!
                fields[name] = String(decoding: bytes[(end + 1)..<lineEnd], as: UTF8.self)
                index = lineEnd + 1
            } else {
                var length: UInt64 = 0
                for (shift, byte) in bytes[(end + 1)..<(end + 9)].enumerated() { length |= UInt64(byte) << (8 * UInt64(shift)) }
                let start = end + 9
                fields[name] = String(decoding: bytes[start..<(start + Int(length))], as: UTF8.self)
                guard bytes[start + Int(length)] == UInt8(ascii: "\n") else { throw NSError(domain: "no newline after binary field", code: 0) }
                index = start + Int(length) + 1
            }
        }
        return fields
    }
}
