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

    func testCurlFetchesThroughASocksServiceByHostName() throws {
        let web = ScratchDirectory("web")
        web.write("hello.txt", "hello through SOCKS5\n")
        let httpPort = TCP.freePort()
        let http = try ChildProcess("/usr/bin/python3", ["-m", "http.server", "--bind", "127.0.0.1", "--directory", web.path, String(httpPort)])
        defer { http.signal(SIGKILL) }
        XCTAssertTrue(waitUntil(timeout: 10) { (try? TCP.connect(port: httpPort, timeout: 1)).map { close($0); return true } ?? false })
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["proxy": socksStanza("proxy", port: port, via: sshd)])
        let curl = try runProgram("/usr/bin/curl", ["-sS", "--max-time", "10", "--socks5-hostname", "127.0.0.1:\(port)", "http://localhost:\(httpPort)/hello.txt"])
        XCTAssertEqual(curl.status, 0, curl.error + tunneld.log)
        XCTAssertEqual(curl.output, "hello through SOCKS5\n")
        XCTAssertTrue(tunneld.waitForLog("target=localhost:\(httpPort)", timeout: 2), "the log names the target the client asked for: \(tunneld.log)")
        XCTAssertTrue(tunneld.log.contains("result=ok"), tunneld.log)
    }

    func testMalformedSocksRequestsGetTheirReplyAndNoChannel() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["proxy": socksStanza("proxy", port: port, via: sshd, extra: "    permit          = 127.0.0.1:\(echo.port) localhost:*")])
        let target = [UInt8(echo.port >> 8), UInt8(echo.port & 0xff)]
        // SOCKS4: closed without a reply.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [4, 1] + target + [127, 0, 0, 1, 0]), [])
        // No acceptable method.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 2]), [5, 0xff])
        // BIND is not supported.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1] + target), [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0])
        // An unknown address type.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 9, 127, 0, 0, 1] + target), [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0])
        // A domain shorter than its length byte says, then the client gives up: nothing opened.
        // (The 255-byte length is the most a SOCKS5 domain can claim: nothing buffers more.)
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 3, 255] + Array("short".utf8)), [5, 0])
        // Not in permit: refused with "not allowed" before any channel.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 2] + target), [5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
        XCTAssertTrue(tunneld.waitForLog("is not in permit", timeout: 2), tunneld.log)
        XCTAssertEqual(echo.connectionCount, 0, "no malformed or refused request reached a target")
        XCTAssertEqual(sshd.acceptedLogins, 0, "nor even made an SSH session")

        // A permitted target works, and data sent right after the request is not lost.
        let reply = try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1] + target + Array("pipelined".utf8))
        XCTAssertEqual(Array(reply.prefix(12)), [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0], tunneld.log)
        XCTAssertEqual(String(decoding: reply.dropFirst(12), as: UTF8.self), "pipelined")

        // A target the server cannot reach: "connection refused" from sshd's "connect failed".
        let closed = TCP.freePort()
        let failed = try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 3, 9] + Array("localhost".utf8) + [UInt8(closed >> 8), UInt8(closed & 0xff)])
        XCTAssertEqual(failed, [5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0], tunneld.log)
    }

    func testMetricsAreServedOverHTTPToLoopbackClients() throws {
        let port = TCP.freePort()
        let metricsPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "00-metrics": "defaults { metrics = 127.0.0.1:\(metricsPort) }\n",
            "mail": stanza("mail", port: port, via: sshd, target: echo.port),
        ])
        XCTAssertEqual(try TCP.exchange(port: port, Array("hi".utf8)), Array("hi".utf8))
        let scrape = try runProgram("/usr/bin/curl", ["-sS", "--max-time", "5", "-D", "-", "http://127.0.0.1:\(metricsPort)/metrics"])
        XCTAssertEqual(scrape.status, 0, scrape.error + tunneld.log)
        XCTAssertTrue(scrape.output.hasPrefix("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4"), scrape.output)
        let body = String(scrape.output[scrape.output.range(of: "\r\n\r\n")!.upperBound...])
        let metrics = try PrometheusText(body)
        XCTAssertEqual(metrics.samples[#"tunneld_connections_total{service="mail",result="ok"}"#], 1)
        let other = try runProgram("/usr/bin/curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(metricsPort)/"])
        XCTAssertEqual(other.output, "404")
    }

    func testAnIPv6ServerAddressAndIPv6AccessRules() throws {
        let sshd6 = try SSHServer(listenAddress: "::1")
        let port = TCP.freePort()
        let refusedPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "v6": stanza("v6", port: port, via: sshd6, target: echo.port)
                .replacingOccurrences(of: "server          = \(sshd6.user)@\(sshd6.listenAddress):\(sshd6.port)", with: "server          = \(sshd6.user)@[::1]:\(sshd6.port)"),
            "rules": stanza("rules", port: refusedPort, via: sshd6, target: echo.port, extra: "    only_from = 127.0.0.0/8 ::/0\n    no_access = ::1/128")
                .replacingOccurrences(of: "server          = \(sshd6.user)@\(sshd6.listenAddress):\(sshd6.port)", with: "server          = \(sshd6.user)@[::1]:\(sshd6.port)"),
        ])
        XCTAssertEqual(try TCP.exchange(port: port, Array("via [::1]".utf8)), Array("via [::1]".utf8), tunneld.log)
        XCTAssertTrue(sshd6.log.contains("Accepted publickey"), "the session went to the IPv6 sshd")

        // IPv6 rules with prefixes: ::/0 admits every IPv6 client, the more specific ::1/128 refuses ::1.
        let fd = try connectIPv6Loopback(port: refusedPort)
        XCTAssertEqual(try TCP.readAll(fd), [])
        close(fd)
        XCTAssertTrue(tunneld.waitForLog("result=\"access: no_access ::1\"", timeout: 2), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: refusedPort, Array("v4 ok".utf8)), Array("v4 ok".utf8))
    }
}
