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
        let client = try ConnectionRacer(server: Endpoint(host: "127.0.0.1", port: port), addressFamily: .any, cache: FamilyCache()).connect(by: .now + .seconds(2)).fd
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
        XCTAssertThrowsError(try ConnectionRacer(server: Endpoint(host: "127.0.0.1", port: port), addressFamily: .any, cache: FamilyCache()).connect(by: .now + .seconds(2))) { error in
            guard case .noConnection(let failure) = error as? ConnectionRacer.Failure else { return XCTFail("\(error)") }
            XCTAssertEqual(failure.sentence(host: "127.0.0.1", server: "127.0.0.1:\(port)"), "cannot connect to 127.0.0.1:\(port): 127.0.0.1 refused")
        }
    }

    func testAnUnresolvableNameSaysSo() {
        XCTAssertThrowsError(try ConnectionRacer(server: Endpoint(host: "no-such-host.invalid", port: 22), addressFamily: .any, cache: FamilyCache()).connect(by: .now + .seconds(2))) { error in
            guard case .noConnection(let failure) = error as? ConnectionRacer.Failure else { return XCTFail("\(error)") }
            XCTAssertTrue(failure.sentence(host: "no-such-host.invalid", server: "no-such-host.invalid:22").hasPrefix("cannot resolve no-such-host.invalid: "), "\(failure)")
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
