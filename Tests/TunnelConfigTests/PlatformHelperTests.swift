import Foundation
import Platform
@testable import TunnelConfig
import XCTest

/// The Glibc helpers that took Foundation's place: running a program, paths, text.
final class PlatformHelperTests: XCTestCase {
    func testAProgramsOutputErrorsAndStatusAreCollected() throws {
        let result = ChildProgram.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], environment: [:], timeout: 5)
        let exit = try result.get()
        XCTAssertEqual(exit.status, 3)
        XCTAssertEqual(String(decoding: exit.output, as: UTF8.self), "out\n")
        XCTAssertEqual(String(decoding: exit.errors, as: UTF8.self), "err\n")
    }

    func testAProgramGetsExactlyTheEnvironmentAndNoInput() throws {
        let exit = try ChildProgram.run("/bin/sh", ["-c", "echo \"$HOME\"; cat"], environment: ["HOME": "/somewhere"], timeout: 5).get()
        XCTAssertEqual(String(decoding: exit.output, as: UTF8.self), "/somewhere\n")
    }

    func testALargeOutputDoesNotStallTheProgram() throws {
        let exit = try ChildProgram.run("/bin/sh", ["-c", "head -c 1048576 /dev/zero"], environment: [:], timeout: 5).get()
        XCTAssertEqual(exit.status, 0)
        XCTAssertEqual(exit.output.count, 1 << 20)
    }

    func testAProgramThatRunsTooLongIsKilledAtTheTimeout() {
        let started = Date()
        let result = ChildProgram.run("/bin/sleep", ["30"], environment: [:], timeout: 0.3)
        guard case .failure(.timedOut) = result else { return XCTFail("\(result)") }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2)
    }

    func testAMissingProgramCannotStart() {
        let result = ChildProgram.run("/nonexistent/ssh", [], environment: [:], timeout: 1)
        guard case .failure(.cannotStart(let reason)) = result else { return XCTFail("\(result)") }
        XCTAssertEqual(reason, "No such file or directory")
    }

    /// As NSString's path methods answer (which, in swift-corelibs-foundation 6.3, crash on
    /// the parent of a bare name).
    func testPathArithmeticMatchesNSString() {
        let parents = ["/a/b/c": "/a/b", "/a/b/c/": "/a/b", "/a": "/", "/": "/", "c": "", "a/b": "a", "//a//b": "/a", "": ""]
        for (path, parent) in parents {
            XCTAssertEqual(PathText.parent(of: path), parent, path)
        }
        for (directory, name) in [("/etc", "x"), ("/etc/", "x"), ("", "x"), ("/etc", ""), ("a", "b")] {
            XCTAssertEqual(PathText.joined(directory, name), (directory as NSString).appendingPathComponent(name), "\(directory) + \(name)")
        }
        XCTAssertEqual(PathText.canonical("/nonexistent/x"), "/nonexistent/x")
        XCTAssertEqual(PathText.canonical("/etc/../etc/."), "/etc")
    }

    func testWhitespaceIsTrimmedAsCharacterSetWhitespacesDid() {
        for text in ["  status \t", "\u{00A0}x y\u{2003}", "", "   ", "\nline\n", "plain"] {
            XCTAssertEqual(text.trimmingWhitespace, text.trimmingCharacters(in: .whitespaces), text.debugDescription)
        }
        XCTAssertEqual("ab".padded(to: 4), "ab  ")
        XCTAssertEqual("abcdef".padded(to: 4), "abcdef")
    }

    func testFilePrefixReadsAtMostTheLimit() throws {
        let path = NSTemporaryDirectory() + "tunneld-prefix-\(getpid())"
        defer { unlink(path) }
        FileManager.default.createFile(atPath: path, contents: Data(repeating: 7, count: 100_000))
        XCTAssertEqual(FilePrefix.read(path, atMost: 70_000)?.count, 70_000)
        XCTAssertEqual(FilePrefix.read(path, atMost: 1 << 20)?.count, 100_000)
        XCTAssertNil(FilePrefix.read(path + ".missing", atMost: 10))
    }

    func testAnOutcomeWakesItsWaiterAtOnceAndOtherwiseWaitsOnlyItsPatience() {
        let outcome = Outcome<String>()
        var started = ContinuousClock.now
        XCTAssertNil(outcome.wait(upTo: .milliseconds(50)))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(50))
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(500))
        DetachedThread.start(name: "setter") {
            usleep(20_000)
            outcome.set("first")
            outcome.set("second")
        }
        started = .now
        XCTAssertEqual(outcome.wait(upTo: .seconds(5)), "first", "the first value stays")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(1), "woken, not timed out")
    }
}
