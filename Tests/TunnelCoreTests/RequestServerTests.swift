import Foundation
import Glibc
import Platform
import XCTest
@testable import TunnelCore

/// The control socket's and metrics' loop: clients served at once, each with its deadline,
/// a bounded number held, the oldest still sending dropped for a newcomer (issue 22).
final class RequestServerTests: XCTestCase {
    private var directory: String!
    private var listening: Int32 = -1

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "request-\(getpid())-\(UUID().uuidString.prefix(8))"
        mkdir(directory, 0o755)
        listening = try ControlSocket.bindSocketFile(directory + "/s.sock", group: nil, owner: nil, what: "test socket")
    }

    override func tearDown() {
        shutdown(listening, Int32(SHUT_RDWR))
        close(listening)
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func start(maximumClients: Int, requestDeadline: Double = 1) throws {
        var limits = RequestServer.Limits(maximumRequest: 64)
        limits.maximumClients = maximumClients
        limits.requestDeadline = requestDeadline
        let server = RequestServer(listening: listening, events: try EventPoll(), limits: limits, isWhole: { $0.contains(UInt8(ascii: "\n")) }) { request, _ in
            Array("got \(String(decoding: request, as: UTF8.self))".utf8)
        }
        server.start(name: "test")
    }

    private func connectClient() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array((directory + "/s.sock").utf8)) }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else { throw POSIXError(.ECONNREFUSED) }
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// All a client reads until the server closes (or 3 s pass).
    private func readAll(_ fd: Int32) -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func testWhenFullTheOldestSilentClientMakesRoomForANewOne() throws {
        try start(maximumClients: 2, requestDeadline: 30)
        let oldest = try connectClient()
        defer { close(oldest) }
        Thread.sleep(forTimeInterval: 0.05)
        let second = try connectClient()
        defer { close(second) }
        Thread.sleep(forTimeInterval: 0.05)
        let asking = try connectClient()
        defer { close(asking) }
        XCTAssertEqual(send(asking, "status\n", 7, 0), 7)
        XCTAssertEqual(readAll(asking), "got status\n")
        let started = Date()
        XCTAssertEqual(readAll(oldest), "", "closed to make room")
        XCTAssertLessThan(Date().timeIntervalSince(started), 1, "at once, not at its deadline")
    }

    func testAClientThatTricklesIsClosedAtItsDeadlineWhileOthersAreServed() throws {
        try start(maximumClients: 64, requestDeadline: 0.5)
        let trickler = try connectClient()
        defer { close(trickler) }
        let started = Date()
        XCTAssertEqual(send(trickler, "st", 2, 0), 2)
        let other = try connectClient()
        defer { close(other) }
        XCTAssertEqual(send(other, "b\n", 2, 0), 2)
        XCTAssertEqual(readAll(other), "got b\n")
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.4, "served while the trickler is still sending")
        Thread.sleep(forTimeInterval: 0.3)
        _ = send(trickler, "a", 1, Int32(MSG_NOSIGNAL))
        XCTAssertEqual(readAll(trickler), "", "no answer to a request that never came whole")
        let took = Date().timeIntervalSince(started)
        XCTAssertGreaterThan(took, 0.45)
        XCTAssertLessThan(took, 1.5, "closed at its total deadline, though it kept sending")
    }
}
