import Foundation
import Glibc
import XCTest
@testable import TunnelCore

/// systemd's watchdog is kept by the event loops themselves (issue 15).
final class WatchdogTests: XCTestCase {
    /// A datagram socket standing in for systemd's notify socket.
    private final class NotifySocket {
        let path: String
        let fd: Int32

        init() {
            path = NSTemporaryDirectory() + "notify-\(getpid())-\(UUID().uuidString.prefix(8)).sock"
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        }

        deinit {
            close(fd)
            unlink(path)
        }

        /// Every message that arrived so far.
        func messages() -> [String] {
            var result: [String] = []
            var buffer = [UInt8](repeating: 0, count: 512)
            while true {
                let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                guard count > 0 else { return result }
                result.append(String(decoding: buffer[0..<count], as: UTF8.self))
            }
        }
    }

    func testEveryLoopMustBeatForTheWatchdogToBeFed() {
        let notify = NotifySocket()
        let watchdog = Watchdog(environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"])
        XCTAssertEqual(watchdog.beatInterval, .milliseconds(500))
        XCTAssertEqual(watchdog.bound(-1), 500, "a loop with nothing to do still wakes to beat")
        XCTAssertEqual(watchdog.bound(100), 100)
        let listener = watchdog.join()
        let session = watchdog.join()
        let start = ContinuousClock.now

        // Both loops run: fed, at most once per beat interval.
        watchdog.beat(listener, now: start)
        watchdog.beat(session, now: start)
        XCTAssertEqual(notify.messages(), ["WATCHDOG=1"])
        watchdog.beat(listener, now: start + .milliseconds(600))
        watchdog.beat(session, now: start + .milliseconds(600))
        XCTAssertEqual(notify.messages(), ["WATCHDOG=1"])

        // The session's loop hangs: the listener keeps beating, but nobody feeds systemd.
        for step in 2...6 { watchdog.beat(listener, now: start + .milliseconds(600 * step)) }
        XCTAssertEqual(notify.messages(), ["WATCHDOG=1"], "only while the session's last beat was within a second")

        // A session that ends leaves; the rest are fed again.
        watchdog.leave(session)
        watchdog.beat(listener, now: start + .milliseconds(4200))
        XCTAssertEqual(notify.messages(), ["WATCHDOG=1"])
    }

    func testWithoutWatchdogUSecNothingBeatsAndNothingWakes() {
        let notify = NotifySocket()
        let watchdog = Watchdog(environment: ["NOTIFY_SOCKET": notify.path])
        XCTAssertFalse(watchdog.isActive)
        XCTAssertNil(watchdog.join())
        XCTAssertEqual(watchdog.bound(-1), -1, "an idle daemon sleeps")
        watchdog.beat(0)
        XCTAssertEqual(notify.messages(), [])
        let otherProcess = Watchdog(environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"])
        XCTAssertFalse(otherProcess.isActive, "WATCHDOG_PID names another process")
    }
}
