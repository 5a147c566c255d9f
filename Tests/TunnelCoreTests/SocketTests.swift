import Glibc
import TunnelConfig
import XCTest
@testable import TunnelCore

final class SocketTests: XCTestCase {
    func testListenAcceptConnectOnLoopback() throws {
        let listener = try Socket.listen(on: Endpoint(host: "127.0.0.1", port: 0))
        defer { close(listener) }
        let port = try boundPort(listener)

        XCTAssertNil(try Socket.accept(from: listener), "nobody has connected yet")
        let client = try Socket.connect(host: "127.0.0.1", port: port, by: .now + .seconds(2))
        defer { close(client) }
        var accepted: (fd: Int32, peer: Endpoint)?
        let deadline = ContinuousClock.now + .seconds(2)
        while accepted == nil && ContinuousClock.now < deadline {
            accepted = try Socket.accept(from: listener)
        }
        let server = try XCTUnwrap(accepted)
        defer { close(server.fd) }
        XCTAssertEqual(server.peer.host, "127.0.0.1")
        XCTAssertEqual(fcntl(server.fd, F_GETFL) & O_NONBLOCK, O_NONBLOCK)
    }

    func testConnectToAClosedPortSaysRefused() throws {
        let listener = try Socket.listen(on: Endpoint(host: "127.0.0.1", port: 0))
        let port = try boundPort(listener)
        close(listener)
        XCTAssertThrowsError(try Socket.connect(host: "127.0.0.1", port: port, by: .now + .seconds(2))) { error in
            XCTAssertEqual((error as? SocketError)?.code, ECONNREFUSED)
        }
    }

    func testAnUnresolvableNameSaysSo() {
        XCTAssertThrowsError(try Socket.connect(host: "no-such-host.invalid", port: 22, by: .now + .seconds(2))) { error in
            XCTAssertTrue("\(error)".contains("no-such-host.invalid"), "\(error)")
        }
    }

    private func boundPort(_ fd: Int32) throws -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let status = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        XCTAssertEqual(status, 0)
        return UInt16(bigEndian: address.sin_port)
    }
}
