import XCTest
@testable import TunnelCore

final class PendingBytesTests: XCTestCase {
    func testDrainKeepsWhatTheWriterRefused() {
        var pending = PendingBytes()
        XCTAssertTrue(pending.isEmpty)
        [UInt8](1...10).withUnsafeBytes { pending.store($0) }
        XCTAssertEqual(pending.count, 10)

        var received: [UInt8] = []
        // A writer that takes three bytes, then says "later".
        var calls = 0
        let error = pending.drain { bytes in
            calls += 1
            guard calls == 1 else { return 0 }
            received.append(contentsOf: bytes.prefix(3))
            return 3
        }
        XCTAssertNil(error)
        XCTAssertEqual(received, [1, 2, 3])
        XCTAssertEqual(pending.count, 7)

        _ = pending.drain { bytes in
            received.append(contentsOf: bytes)
            return bytes.count
        }
        XCTAssertEqual(received, [UInt8](1...10))
        XCTAssertTrue(pending.isEmpty)
    }

    func testDrainReportsAHardError() {
        var pending = PendingBytes()
        [UInt8](repeating: 7, count: 4).withUnsafeBytes { pending.store($0) }
        XCTAssertEqual(pending.drain { _ in -Int(EPIPE) }, EPIPE)
        XCTAssertEqual(pending.count, 4)
    }

    func testThrowingDrainStopsAtWouldBlock() throws {
        var pending = PendingBytes()
        [UInt8](repeating: 1, count: 100).withUnsafeBytes { pending.store($0) }
        var taken = 0
        try pending.drainIntoChannel({ bytes in
            guard taken < 60 else { return nil }
            let count = min(30, bytes.count)
            taken += count
            return count
        })
        XCTAssertEqual(taken, 60)
        XCTAssertEqual(pending.count, 40)
    }
}
