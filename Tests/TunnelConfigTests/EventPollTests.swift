import Glibc
import Platform
import XCTest

/// The epoll wrapper the loops wait in: ready descriptors only, interest changed on change,
/// hang-ups never reported for a descriptor nobody waits on, nesting, files always ready.
final class EventPollTests: XCTestCase {
    private func socketPair() -> (Int32, Int32) {
        var ends: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends), 0)
        return (ends[0], ends[1])
    }

    private func ready(_ poll: EventPoll, timeout: Int32 = 0) -> [UInt64: UInt32] {
        var seen: [UInt64: UInt32] = [:]
        poll.wait(timeout: timeout) { seen[$0.token] = $0.events }
        return seen
    }

    func testOnlyReadyDescriptorsAreReportedWithTheirTokens() throws {
        let poll = try EventPoll()
        var pairs: [(Int32, Int32)] = []
        var registrations = [EventPoll.Registration](repeating: .init(), count: 100)
        for index in 0..<100 {
            pairs.append(socketPair())
            poll.update(pairs[index].0, token: UInt64(index), to: .readable, registration: &registrations[index])
        }
        defer { for (a, b) in pairs { close(a); close(b) } }
        XCTAssertTrue(ready(poll).isEmpty)
        var byte: UInt8 = 7
        XCTAssertEqual(write(pairs[42].1, &byte, 1), 1)
        XCTAssertEqual(Array(ready(poll, timeout: 1000).keys), [42])
        // Level-triggered: still ready until read.
        XCTAssertEqual(Array(ready(poll).keys), [42])
        XCTAssertEqual(read(pairs[42].0, &byte, 1), 1)
        XCTAssertTrue(ready(poll).isEmpty)
    }

    func testAHangUpIsNotReportedOnceTheInterestIsDropped() throws {
        let poll = try EventPoll()
        let (mine, theirs) = socketPair()
        defer { close(mine) }
        var registration = EventPoll.Registration()
        poll.update(mine, token: 1, to: .readable, registration: &registration)
        close(theirs)
        XCTAssertNotNil(ready(poll)[1])
        poll.update(mine, token: 1, to: [], registration: &registration)
        XCTAssertEqual(registration.interest, [])
        XCTAssertTrue(ready(poll).isEmpty)
        poll.update(mine, token: 1, to: .writable, registration: &registration)
        XCTAssertEqual(registration.interest, .writable)
        XCTAssertNotNil(ready(poll)[1])
    }

    func testANestedSetPollsReadableWhileOneOfItsOwnIsReady() throws {
        let outer = try EventPoll()
        let inner = try EventPoll()
        var innerRegistration = EventPoll.Registration()
        outer.update(inner.descriptor, token: 9, to: .readable, registration: &innerRegistration)
        let (mine, theirs) = socketPair()
        defer { close(mine); close(theirs) }
        var registration = EventPoll.Registration()
        inner.update(mine, token: 3, to: .readable, registration: &registration)
        XCTAssertTrue(ready(outer).isEmpty)
        var byte: UInt8 = 1
        XCTAssertEqual(write(theirs, &byte, 1), 1)
        XCTAssertNotNil(ready(outer, timeout: 1000)[9])
        XCTAssertNotNil(ready(inner)[3])
        // Paused as a whole: the outer set no longer wakes for it.
        outer.update(inner.descriptor, token: 9, to: [], registration: &innerRegistration)
        XCTAssertTrue(ready(outer).isEmpty)
    }

    func testARegularFileIsMarkedAlwaysReady() throws {
        let poll = try EventPoll()
        let fd = open("/proc/self/status", O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var registration = EventPoll.Registration()
        poll.update(fd, token: 5, to: .readable, registration: &registration)
        XCTAssertTrue(registration.isAlwaysReady)
    }

    func testAnUnchangedInterestCostsNoCallAndAClosedDescriptorIsForgotten() throws {
        let poll = try EventPoll()
        let (mine, theirs) = socketPair()
        defer { close(theirs) }
        var registration = EventPoll.Registration()
        poll.update(mine, token: 1, to: [.readable, .writable], registration: &registration)
        poll.update(mine, token: 1, to: [.readable, .writable], registration: &registration)
        XCTAssertEqual(registration.interest, [.readable, .writable])
        close(mine)
        poll.update(mine, token: 1, to: .readable, registration: &registration)
        XCTAssertEqual(registration.interest, [])
    }
}
