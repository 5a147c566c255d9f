import Foundation
import Glibc
import XCTest

/// What users expect of the service surface (issue 15): localhost on both loopbacks, a SOCKS5
/// service, against a real sshd.
final class SurfaceTests: SSHTestCase {
    /// Connects to [::1]:`port`; the socket gets send and receive timeouts.
    private func connectIPv6Loopback(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        address.sin6_addr = in6addr_loopback
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        guard status == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw TCP.Failure(description: "connect to [::1]:\(port): \(message)")
        }
        TCP.setTimeout(fd, 10)
        return fd
    }

    func testLocalhostIsServedOnBothLoopbacks() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["mail": stanza("mail", port: port, via: sshd, target: echo.port)])
        XCTAssertEqual(try TCP.exchange(port: port, Array("over IPv4".utf8)), Array("over IPv4".utf8))
        let fd = try connectIPv6Loopback(port: port)
        defer { close(fd) }
        try TCP.sendAll(fd, Array("over IPv6".utf8))
        shutdown(fd, Int32(SHUT_WR))
        XCTAssertEqual(String(decoding: try TCP.readAll(fd), as: UTF8.self), "over IPv6", tunneld.log)
        XCTAssertTrue(tunneld.waitForLog("peer=[::1]:", timeout: 2), tunneld.log)
    }
}
