import Foundation
import Glibc
import XCTest

/// A burst of connections to one service (issue 23): every one is served and echoes exactly
/// its own bytes; none is refused, reset or left waiting.
final class BurstTests: XCTestCase {
    func test01_TwoThousandConnectionsInABurstAllEchoTheirOwnBytes() throws {
        let count = 2_000
        // The test holds both ends it makes (clients and echo side); tunneld and sshd,
        // started below, inherit the limit from this process.
        let limit = ManyClients.raiseDescriptorLimit(to: 3 * count + 1_000)
        try XCTSkipIf(limit < 2 * count + 200, "the descriptor limit (\(limit)) is too low for \(count) clients and their echoes")
        let sshd = try SSHServer()
        let echo = try PolledEchoServer()
        defer { echo.stop() }
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["burst": stanza("burst", port: port, via: sshd, target: echo.port)])
        // One warm client first: the burst measures serving, not the first login.
        XCTAssertEqual(try TCP.exchange(port: port, Array("warm".utf8), timeout: 10), Array("warm".utf8), tunneld.log)

        // The status a user would see while the burst is being served.
        let statusDuringBurst = FailureList()
        let statusThread = Thread {
            usleep(1_000_000)
            let answer = try? runProgram(TunneldProcess.binary, ["status", "--socket", tunneld.controlSocket], timeout: 10)
            statusDuringBurst.append(answer.map { "exit \($0.status)\n\($0.output)\($0.error)" } ?? "status did not run")
        }
        statusThread.start()
        let result = EchoBurst.run(port: port, count: count, timeout: 40)
        _ = waitUntil(timeout: 10) { !statusDuringBurst.all.isEmpty }
        print("burst of \(count) through tunneld: \(result.summary)")
        print("tunneld status 1 s into the burst:\n\(statusDuringBurst.all.first ?? "none")")
        print("tunneld RSS after the burst: \(tunneld.residentKiB) KiB; the echo server accepted \(echo.connectionCount)")

        XCTAssertEqual(result.echoed, count, "every client echoes exactly its own bytes: \(result.summary)\n\(tunneld.log.suffix(3_000))")
        XCTAssertFalse(result.endings.contains { if case .wrongBytes = $0 { return true } else { return false } }, "no bytes crossed between clients: \(result.summary)")
        XCTAssertLessThan(result.seconds, 30, "the burst is served within half a minute: \(result.summary)")
        let failed = tunneld.connectionLines(containing: " warning ")
        XCTAssertTrue(failed.isEmpty, "tunneld ended no connection with a failure (\(failed.count) did): \(failed.prefix(5))")
        XCTAssertTrue(tunneld.isRunning)
    }

    func test02_TheDaemonRaisesSystemdsSoftDescriptorLimitToTheHardOne() throws {
        // systemd's default for services: soft 1024, hard far higher.
        let sshd = try SSHServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["a": stanza("a", port: port, via: sshd, target: TCP.freePort())],
                                         wrapper: ["/usr/bin/prlimit", "--nofile=1024:4096"])
        let limits = try String(contentsOfFile: "/proc/\(tunneld.pid)/limits", encoding: .utf8)
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
        XCTAssertEqual(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).prefix(2), ["4096", "4096"], "soft raised to hard: \(line)")
        XCTAssertTrue(tunneld.log.contains("open-file limit set to the hard limit nofile=4096 nofile.before=1024"), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("max_connections=3968"), "the connection bound follows the raised limit (4096 less the reserve of 128): \(tunneld.log)")
    }

    func test03_ABurstPastCPSPausesTheServiceAtTheFirstClientOverTheRate() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["a": stanza("a", port: port, via: sshd, target: echo.port, extra: "    cps = 5 6")])
        // Twenty clients wait in the backlog at once: the listener finds them in one pass.
        tunneld.signal(SIGSTOP)
        let clients = try (0..<20).map { _ in try TCP.connect(port: port) }
        defer { clients.forEach { close($0) } }
        for fd in clients { try TCP.sendAll(fd, [7]) }
        tunneld.signal(SIGCONT)
        usleep(3_000_000)
        var served = 0, refused = 0, waiting = 0
        for fd in clients {
            var byte: UInt8 = 0
            switch recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) {
            case 1: served += 1
            case 0: refused += 1
            default: if errno == EAGAIN { waiting += 1 } else { refused += 1 }
            }
        }
        XCTAssertEqual([served, refused, waiting], [5, 1, 14], "five served, the sixth refused, the rest wait out the pause in the backlog (served, refused, waiting): \(tunneld.log)")
        XCTAssertEqual(tunneld.connectionLines(containing: "limit: cps").count, 1, tunneld.log)
    }

    func test04_ASOCKSClientIsServedAtOnceWhileFiveHundredSilentOnesWaitOutTheirHandshakeTimeout() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["proxy": socksStanza("proxy", port: port, via: sshd)])
        let silentSince = Date()
        let silent = try (0..<500).map { _ in try TCP.connect(port: port, timeout: 15) }
        defer { silent.forEach { close($0) } }
        usleep(200_000)

        let started = Date()
        let fd = try TCP.connect(port: port, timeout: 5)
        defer { close(fd) }
        try TCP.sendAll(fd, [5, 1, 0])
        var reply = [UInt8](repeating: 0, count: 10)
        XCTAssertEqual(recv(fd, &reply, 2, Int32(MSG_WAITALL)), 2)
        XCTAssertEqual(Array(reply.prefix(2)), [5, 0])
        try TCP.sendAll(fd, [5, 1, 0, 1, 127, 0, 0, 1, UInt8(echo.port >> 8), UInt8(echo.port & 0xff)])
        XCTAssertEqual(recv(fd, &reply, 10, Int32(MSG_WAITALL)), 10)
        XCTAssertEqual(Array(reply.prefix(2)), [5, 0], "the CONNECT succeeds")
        try TCP.sendAll(fd, Array("through".utf8))
        var echoed = [UInt8](repeating: 0, count: 7)
        XCTAssertEqual(recv(fd, &echoed, 7, Int32(MSG_WAITALL)), 7)
        XCTAssertEqual(String(decoding: echoed, as: UTF8.self), "through")
        XCTAssertLessThan(Date().timeIntervalSince(started), 1, "served at once beside 500 clients in their handshake")

        // Each silent client is closed at its handshake deadline (10 s), not before.
        for client in silent {
            var byte: UInt8 = 0
            XCTAssertEqual(recv(client, &byte, 1, 0), 0, "closed without a reply")
        }
        let seconds = Date().timeIntervalSince(silentSince)
        XCTAssertGreaterThan(seconds, 9.5)
        XCTAssertLessThan(seconds, 12, "all closed by their deadline")
        XCTAssertTrue(tunneld.waitForLog("no SOCKS5 request within 10 s", count: 500, timeout: 2), tunneld.log.suffix(2_000).description)
    }
}
