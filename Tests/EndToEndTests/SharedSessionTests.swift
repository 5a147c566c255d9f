import Foundation
import Glibc
import XCTest

/// Many clients share sessions to one server safely (issue 10): a target that never answers,
/// sessions killed under live clients, a server that speaks first, a re-key under load.
final class SharedSessionTests: SSHTestCase {
    func test01_ABlackHoledTargetHarmsNoOtherClientOnTheSameServer() throws {
        let hole = try BlackHole()
        let goodPort = TCP.freePort()
        let holePort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "good": stanza("good", port: goodPort, via: sshd, target: echo.port, extra: "    connect_timeout = 3"),
            "hole": stanza("hole", port: holePort, via: sshd, target: hole.port, extra: "    connect_timeout = 3"),
        ])
        let conversation = Conversation(port: goodPort)
        XCTAssertTrue(waitUntil(timeout: 5) { conversation.rounds > 3 }, "the conversation starts: \(tunneld.log)")

        // Three clients of the black hole at once.
        let ends = FailureList()
        let group = DispatchGroup()
        for index in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                let started = Date()
                do {
                    let fd = try TCP.connect(port: holePort, timeout: 20)
                    defer { close(fd) }
                    let reply = try TCP.readAll(fd)
                    ends.append(String(format: "hole %d closed after %.2f s with %d bytes", index, Date().timeIntervalSince(started), reply.count))
                } catch {
                    ends.append("hole \(index): \(error)")
                }
            }.start()
        }
        usleep(300_000)

        // New clients of the live service get through quickly while the opens are stuck.
        for round in 0..<5 {
            let started = Date()
            XCTAssertEqual(try TCP.exchange(port: goodPort, Array("new \(round)".utf8), timeout: 5), Array("new \(round)".utf8))
            let seconds = Date().timeIntervalSince(started)
            XCTAssertLessThan(seconds, 1.0, "a new client of good waited \(seconds) s behind the black hole: \(tunneld.log)")
            usleep(200_000)
        }

        XCTAssertEqual(group.wait(timeout: .now() + 10), .success, "every hole client ends")
        for line in ends.all {
            let seconds = Double(line.split(separator: " ")[4]) ?? 99
            XCTAssertLessThan(seconds, 3 + 1, "each hole client ends within its connect_timeout + 1 s: \(line)")
            XCTAssertTrue(line.hasSuffix("with 0 bytes"), line)
        }
        XCTAssertTrue(waitUntil(timeout: 2) { tunneld.connectionLines(containing: "service=hole").count == 3 }, tunneld.log)
        XCTAssertTrue(tunneld.connectionLines(containing: "service=hole").allSatisfy { $0.contains("did not answer the channel open") }, tunneld.log)

        // The live conversation was never cut nor stalled.
        usleep(500_000)
        conversation.stop()
        XCTAssertNil(conversation.failure, "the live conversation: \(conversation.failure ?? "") \(tunneld.log)")
        XCTAssertLessThan(conversation.slowest, 1.0, "its slowest round trip")
        XCTAssertFalse(tunneld.log.contains("session down"), "no session was declared dead: \(tunneld.log)")
    }

    func test02_AServerThatSpeaksFirstIsNotDelayedByNagle() throws {
        let smtp = try EchoServer(greeting: "220 mail.example ESMTP")
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["smtp": stanza("smtp", port: port, via: sshd, target: smtp.port)])
        defer { withExtendedLifetime(tunneld) {} }
        let times: [Double]
        do {
            times = try TCP.serverFirstExchangeTimes(port: port, count: 200)
        } catch {
            return XCTFail("\(error); tunneld's log:\n\(tunneld.log)")
        }
        let median = times[times.count / 2]
        print(String(format: "server-first exchange through tunneld: median %.2f ms, slowest %.2f ms", median * 1000, times.last! * 1000))
        XCTAssertLessThan(times.last!, 1.0, "no exchange waits for a timer")
        XCTAssertLessThan(median, 0.010, "banner, EHLO, QUIT through a warm session: no 40 ms delayed-ACK stall")
    }

    func test03_ClientsGetOnlyTheirOwnBytesWhileSessionsAreKilled() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["echo": stanza("echo", port: port, via: sshd, target: echo.port, extra: "    sessions = 2")])
        let failures = FailureList()
        let outcomes = Counter()
        let group = DispatchGroup()
        let stop = Date().addingTimeInterval(4)
        for index in 0..<50 {
            group.enter()
            Thread {
                defer { group.leave() }
                var round = 0
                while Date() < stop {
                    round += 1
                    let bytes = Array("client \(index) round \(round) ".utf8) + randomBytes(4096 + index)
                    do {
                        let received = try TCP.exchange(port: port, bytes, timeout: 10)
                        // A killed session may cut a client short; it must never see another's bytes.
                        if received != Array(bytes.prefix(received.count)) {
                            failures.append("client \(index) round \(round): received bytes that are not its own")
                        }
                        outcomes.add(received.count == bytes.count ? "whole" : "cut")
                    } catch {
                        outcomes.add("error")
                    }
                }
            }.start()
        }
        for _ in 0..<6 {
            usleep(600_000)
            sshd.killSessions()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
        print("churn outcomes: \(outcomes.all)")
        XCTAssertEqual(failures.all, [])
        XCTAssertGreaterThan(outcomes.count("whole"), 100, "most exchanges complete: \(outcomes.all)")
        XCTAssertTrue(tunneld.isRunning)
        // After the churn, the service works.
        XCTAssertEqual(try TCP.exchange(port: port, Array("after".utf8)), Array("after".utf8))
    }

    func test04_AServerRekeyDuringBulkTransfersLosesNothing() throws {
        sshd = try SSHServer(extraConfig: "RekeyLimit 1M")
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["echo": stanza("echo", port: port, via: sshd, target: echo.port, extra: "    sessions = 1")])
        let failures = FailureList()
        let group = DispatchGroup()
        for index in 0..<4 {
            group.enter()
            Thread {
                defer { group.leave() }
                let bytes = randomBytes((16 << 20) + index)
                do {
                    let received = try TCP.exchange(port: port, bytes, timeout: 60)
                    if received != bytes { failures.append("client \(index): \(received.count) bytes back, not the \(bytes.count) sent") }
                } catch {
                    failures.append("client \(index): \(error)")
                }
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 90), .success)
        XCTAssertEqual(failures.all, [], tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 1, "one session carried them all")
        XCTAssertTrue(tunneld.waitForLog("result=ok", count: 4, timeout: 5), tunneld.log)
    }

    func test05_ConnectionsSpreadOverAtMostSessionsPerServer() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["echo": stanza("echo", port: port, via: sshd, target: echo.port, extra: "    sessions = 2")])
        let failures = FailureList()
        let group = DispatchGroup()
        // A session is up first, so that the clients are routed one by one: the fifth finds
        // the first session carrying 4 and starts the second.
        XCTAssertEqual(try TCP.exchange(port: port, Array("warm".utf8)), Array("warm".utf8))
        // All 16 are connected, each with its channel open, before any sends its bulk: the
        // connections are live at once however slow the machine (a sanitizer build is).
        let connected = DispatchGroup()
        for _ in 0..<16 { connected.enter() }
        for index in 0..<16 {
            group.enter()
            Thread {
                defer { group.leave() }
                var hasLeft = false
                defer { if !hasLeft { connected.leave() } }
                let bytes = randomBytes((4 << 20) + index)
                do {
                    let fd = try TCP.connect(port: port, timeout: 60)
                    defer { close(fd) }
                    try TCP.sendAll(fd, Array("open\n".utf8))
                    guard try TCP.readLine(fd) == "open\n" else { throw TCP.Failure(description: "no echo of the first line") }
                    hasLeft = true
                    connected.leave()
                    _ = connected.wait(timeout: .now() + 30)
                    let sender = Thread {
                        try? TCP.sendAll(fd, bytes)
                        shutdown(fd, Int32(SHUT_WR))
                    }
                    sender.start()
                    if try TCP.readAll(fd) != bytes { failures.append("client \(index): bytes differ") }
                } catch {
                    failures.append("client \(index): \(error)")
                }
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 90), .success)
        XCTAssertEqual(failures.all, [], tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 2, "16 live connections spread over the 2 sessions allowed")
        let status = try runProgram(TunneldProcess.binary, ["status", "--json", "--socket", tunneld.directory.file("control.sock")])
        XCTAssertTrue(status.output.contains("\"sessionsUp\" : 2"), status.output)
    }
}

/// Counts named outcomes from many threads.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [String: Int] = [:]

    func add(_ name: String) {
        lock.lock()
        counts[name, default: 0] += 1
        lock.unlock()
    }

    func count(_ name: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return counts[name] ?? 0
    }

    var all: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return counts
    }
}
