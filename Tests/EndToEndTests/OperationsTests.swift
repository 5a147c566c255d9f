import Foundation
import Glibc
import XCTest

/// Operating the daemon (issue 4): reload, drain, limits, access rules, status, systemd,
/// stdio mode; all against a real sshd.
final class OperationsTests: SSHTestCase {
    /// A connection that stays open; `roundTrip` checks it still carries bytes.
    private final class HeldConnection {
        let fd: Int32
        init(port: UInt16) throws { fd = try TCP.connect(port: port, timeout: 5) }
        deinit { close(fd) }
        func roundTrip(_ text: String) throws -> Bool {
            try TCP.sendAll(fd, Array(text.utf8))
            return try TCP.readAll(fd, limit: text.utf8.count) == Array(text.utf8)
        }
        func finish() throws -> Bool {
            shutdown(fd, Int32(SHUT_WR))
            return try TCP.readAll(fd) == []
        }
    }

    func testReloadKeepsUnchangedServicesAndTheirConnections() throws {
        let ports = (0..<5).map { _ in TCP.freePort() }
        let tunneld = try TunneldProcess(stanzas: [
            "a": stanza("a", port: ports[0], via: sshd, target: echo.port),
            "b": stanza("b", port: ports[1], via: sshd, target: echo.port),
            "c": stanza("c", port: ports[2], via: sshd, target: echo.port),
        ])
        let onUnchanged = try HeldConnection(port: ports[0])
        let onRemoved = try HeldConnection(port: ports[1])
        XCTAssertTrue(try onUnchanged.roundTrip("before"))
        XCTAssertTrue(try onRemoved.roundTrip("before"))

        // b removed, c moved to another port, d added.
        try FileManager.default.removeItem(atPath: tunneld.configPath + "/b")
        tunneld.directory.write("services.d/c", stanza("c", port: ports[3], via: sshd, target: echo.port))
        tunneld.directory.write("services.d/d", stanza("d", port: ports[4], via: sshd, target: echo.port))
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded: 1 added, 1 changed, 1 removed, 1 unchanged", timeout: 5), tunneld.log)

        XCTAssertTrue(try onUnchanged.roundTrip("after"), "a connection on an unchanged service carries on")
        XCTAssertTrue(try onRemoved.roundTrip("after"), "a removed service's live connection finishes")
        XCTAssertTrue(try onRemoved.finish())
        XCTAssertThrowsError(try TCP.connect(port: ports[1]), "the removed service no longer accepts")
        XCTAssertThrowsError(try TCP.connect(port: ports[2]), "the moved service left its old port")
        XCTAssertEqual(try TCP.exchange(port: ports[3], Array("c".utf8)), Array("c".utf8))
        XCTAssertEqual(try TCP.exchange(port: ports[4], Array("d".utf8)), Array("d".utf8))

        // A broken file changes nothing.
        tunneld.directory.write("services.d/e", "service e { port = 99999 }")
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reload refused", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("services.d/e:1: error: e: port: port 99999 is out of range"), tunneld.log)
        XCTAssertTrue(try onUnchanged.roundTrip("still"))
        XCTAssertEqual(try TCP.exchange(port: ports[4], Array("d".utf8)), Array("d".utf8))
        XCTAssertEqual(sshd.acceptedLogins, 1, "one session served them all")
    }

    func testTermLetsLiveConnectionsFinishThenExitsZero() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "defaults": "defaults { shutdown_timeout = 3 }\n",
            "a": stanza("a", port: port, via: sshd, target: echo.port),
        ])
        let finishing = try HeldConnection(port: port)
        let lingering = try HeldConnection(port: port)
        XCTAssertTrue(try finishing.roundTrip("1"))
        XCTAssertTrue(try lingering.roundTrip("2"))
        let stoppedAt = Date()
        tunneld.signal(SIGTERM)
        XCTAssertTrue(tunneld.waitForLog("notice stopping", timeout: 3))
        XCTAssertThrowsError(try TCP.connect(port: port), "stops accepting at once")
        XCTAssertTrue(try finishing.roundTrip("in flight"), "a live connection keeps working while draining")
        XCTAssertTrue(try finishing.finish())
        XCTAssertEqual(tunneld.terminate(timeout: 10), 0)
        let seconds = Date().timeIntervalSince(stoppedAt)
        XCTAssertGreaterThan(seconds, 2.5, "the connection that did not finish got the whole bound")
        XCTAssertLessThan(seconds, 6)
        XCTAssertEqual(tunneld.connectionLines(containing: "result=ok").count, 1, tunneld.log)
        XCTAssertEqual(tunneld.connectionLines(containing: "result=shutdown").count, 1, tunneld.log)
    }

    func testLimitsRefuseExactlyWhatTheyShould() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["a": stanza("a", port: port, via: sshd, target: echo.port, extra: "    instances = 3\n    per_source = 2")])
        let held = try (0..<2).map { _ in try HeldConnection(port: port) }
        for connection in held { XCTAssertTrue(try connection.roundTrip("x")) }
        // A third from the same address: per_source.
        let third = try TCP.connect(port: port)
        XCTAssertEqual(try TCP.readAll(third), [])
        close(third)
        XCTAssertTrue(tunneld.waitForLog("result=\"limit: per_source\"", timeout: 2), tunneld.log)
        XCTAssertEqual(tunneld.connectionLines(containing: "limit:").count, 1)
        XCTAssertEqual(echo.connectionCount, 2, "a refused client never reaches the target")
        XCTAssertEqual(sshd.acceptedLogins, 1)
    }

    func testInstancesAndCPS() throws {
        let port = TCP.freePort()
        let cpsPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "a": stanza("a", port: port, via: sshd, target: echo.port, extra: "    instances = 2"),
            "b": stanza("b", port: cpsPort, via: sshd, target: echo.port, extra: "    cps = 3 2"),
        ])
        let held = try (0..<2).map { _ in try HeldConnection(port: port) }
        for connection in held { XCTAssertTrue(try connection.roundTrip("x")) }
        for _ in 0..<3 {
            let fd = try TCP.connect(port: port)
            XCTAssertEqual(try TCP.readAll(fd), [])
            close(fd)
        }
        XCTAssertTrue(tunneld.waitForLog("limit: instances", count: 3, timeout: 2), tunneld.log)

        // Four quick connections: the fourth is over 3 a second and pauses the service.
        for index in 0..<4 {
            let fd = try TCP.connect(port: cpsPort)
            if index < 3 { try TCP.sendAll(fd, [1]); XCTAssertEqual(try TCP.readAll(fd, limit: 1), [1]) }
            close(fd)
        }
        XCTAssertTrue(tunneld.waitForLog("limit: cps", timeout: 2), tunneld.log)
        XCTAssertTrue(waitUntil(timeout: 5) { (try? TCP.exchange(port: cpsPort, [9], timeout: 3)) == [9] }, "accepting resumes after the pause")
    }

    func testAccessRulesRefuseWithoutAnSSHConnection() throws {
        let port = TCP.freePort()
        let allowedPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "closed": stanza("closed", port: port, via: sshd, target: echo.port, extra: "    only_from = 192.0.2.0/24"),
            "open": stanza("open", port: allowedPort, via: sshd, target: echo.port, extra: "    only_from = 127.0.0.0/8\n    no_access = 127.0.0.2"),
        ])
        for _ in 0..<3 {
            let fd = try TCP.connect(port: port)
            XCTAssertEqual(try TCP.readAll(fd), [])
            close(fd)
        }
        XCTAssertTrue(tunneld.waitForLog("result=\"access: not in only_from\"", count: 3, timeout: 2), tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 0, "refused clients never cause an SSH connection")
        XCTAssertEqual(try TCP.exchange(port: allowedPort, Array("ok".utf8)), Array("ok".utf8))
    }

    func testTheDaemonWideBoundKeepsDescriptorsFromRunningOut() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(
            stanzas: ["a": stanza("a", port: port, via: sshd, target: echo.port)],
            wrapper: ["/usr/bin/prlimit", "--nofile=160"])
        XCTAssertTrue(tunneld.log.contains("max_connections=32"), "160 descriptors less the reserve of 128: \(tunneld.log)")
        var held: [HeldConnection] = []
        for _ in 0..<40 {
            if let connection = try? HeldConnection(port: port) { held.append(connection) }
        }
        XCTAssertTrue(tunneld.waitForLog("limit: max_connections", count: 8, timeout: 5), tunneld.log)
        XCTAssertFalse(tunneld.log.contains("out of file descriptors"), "the bound comes first")
        XCTAssertTrue(try held[0].roundTrip("alive"), "live connections continue")
        held.removeAll()
        XCTAssertTrue(waitUntil(timeout: 10) { (try? TCP.exchange(port: port, Array("again".utf8), timeout: 3)) == Array("again".utf8) }, tunneld.log)
    }

    func testDescriptorsInheritedFromTheParentAreClosed() throws {
        // A parent's stray descriptors (these have no close-on-exec flag) must not stay open in
        // the daemon, nor count against its limit: 60 of them under a limit of 48.
        var strays: [Int32] = []
        for _ in 0..<60 { strays.append(open("/dev/null", O_RDONLY)) }
        defer { strays.forEach { close($0) } }
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(
            stanzas: ["a": stanza("a", port: port, via: sshd, target: echo.port)],
            wrapper: ["/usr/bin/prlimit", "--nofile=96"])
        let open = (try FileManager.default.contentsOfDirectory(atPath: "/proc/\(tunneld.pid)/fd")).compactMap { entry -> String? in
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(tunneld.pid)/fd/\(entry)")
        }
        XCTAssertLessThanOrEqual(open.filter { $0 == "/dev/null" }.count, 1, "only standard input may be /dev/null: \(open)")
        XCTAssertEqual(try TCP.exchange(port: port, Array("works".utf8)), Array("works".utf8), tunneld.log)
    }

    func testRunningOutOfDescriptorsPausesAcceptingAndRecovers() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(
            stanzas: [
                "a": stanza("a", port: port, via: sshd, target: echo.port),
                "01-bound": "defaults { max_connections = 1000 }\n",
            ],
            wrapper: ["/usr/bin/prlimit", "--nofile=48"])
        let live = try HeldConnection(port: port)
        XCTAssertTrue(try live.roundTrip("first"))
        var held: [HeldConnection] = []
        for _ in 0..<60 {
            if let connection = try? HeldConnection(port: port) { held.append(connection) }
        }
        XCTAssertTrue(tunneld.waitForLog("out of file descriptors", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.isRunning)
        XCTAssertTrue(try live.roundTrip("alive"), "live connections continue")
        held.removeAll()
        XCTAssertTrue(waitUntil(timeout: 10) { (try? TCP.exchange(port: port, Array("again".utf8), timeout: 3)) == Array("again".utf8) }, tunneld.log)
        XCTAssertEqual(tunneld.log.components(separatedBy: "out of file descriptors").count - 1, 1, "logged once: \(tunneld.log)")
    }

    func testRunAsReadsTheDefaultKeyAndKnownHostsFromItsOwnHome() throws {
        try XCTSkipIf(geteuid() != 0, "only root can create an account and switch to it")
        let account = "tdlrun\(getpid() % 100_000)"
        let home = ScratchDirectory("runas-home")
        _ = try? runProgram("/usr/sbin/userdel", [account])
        let created = try runProgram("/usr/sbin/useradd", ["--system", "--home-dir", home.path, "--shell", "/usr/sbin/nologin", account])
        try XCTSkipIf(created.status != 0, "useradd failed: \(created.error)")
        defer { _ = try? runProgram("/usr/sbin/userdel", [account]) }
        guard let entry = getpwnam(account) else { throw XCTSkip("no account \(account)") }
        let (uid, gid) = (entry.pointee.pw_uid, entry.pointee.pw_gid)
        // Only the default places: ~/.ssh/id_ed25519 and ~/.ssh/known_hosts of the run_as account.
        try FileManager.default.createDirectory(atPath: home.file(".ssh"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: sshd.userKey, toPath: home.file(".ssh/id_ed25519"))
        try FileManager.default.copyItem(atPath: sshd.knownHosts, toPath: home.file(".ssh/known_hosts"))
        for path in [home.path, home.file(".ssh"), home.file(".ssh/id_ed25519"), home.file(".ssh/known_hosts")] { chown(path, uid, gid) }
        chmod(home.path, 0o700)
        chmod(home.file(".ssh"), 0o700)
        chmod(home.file(".ssh/id_ed25519"), 0o600)
        let control = home.file("control")
        try FileManager.default.createDirectory(atPath: control, withIntermediateDirectories: true)
        chown(control, uid, gid)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "defaults": "defaults { run_as = \(account) control_socket = \(control)/control.sock }\n",
            "a": """
                service a
                {
                    port            = \(port)
                    server          = \(sshd.user)@127.0.0.1:\(sshd.port)
                    server_args     = 127.0.0.1 \(echo.port)
                    identity_agent  = none
                }

                """,
        ])
        XCTAssertEqual(try TCP.exchange(port: port, Array("as \(account)".utf8)), Array("as \(account)".utf8), tunneld.log)
        let check = try runProgram(TunneldProcess.binary, ["--check", "-f", tunneld.configPath])
        XCTAssertTrue(check.output.contains("keys and known_hosts are read as \(account) (run_as):"), check.output)
        XCTAssertTrue(check.output.contains("identity \(home.file(".ssh/id_ed25519"))"), check.output)
    }

    func testRunAsDropsRootAfterBinding() throws {
        try XCTSkipIf(geteuid() != 0, "only root can switch accounts")
        guard let nobody = getpwnam("nobody") else { throw XCTSkip("no account named nobody") }
        let (uid, gid) = (nobody.pointee.pw_uid, nobody.pointee.pw_gid)
        // Keys must be readable by the account tunneld becomes.
        let keys = ScratchDirectory("runas")
        let key = keys.file("id_ed25519")
        try FileManager.default.copyItem(atPath: sshd.userKey, toPath: key)
        chown(key, uid, gid)
        chmod(key, 0o600)
        let controlDirectory = keys.file("control")
        try FileManager.default.createDirectory(atPath: controlDirectory, withIntermediateDirectories: true)
        chown(controlDirectory, uid, gid)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "defaults": "defaults { run_as = nobody control_socket = \(controlDirectory)/control.sock }\n",
            "a": stanza("a", port: port, via: sshd, target: echo.port).replacingOccurrences(of: sshd.userKey, with: key),
        ])
        XCTAssertTrue(tunneld.log.contains("switched to run_as account"), tunneld.log)
        let status = try String(contentsOfFile: "/proc/\(tunneld.pid)/status", encoding: .utf8)
        let uidLine = status.split(separator: "\n").first { $0.hasPrefix("Uid:") } ?? ""
        XCTAssertEqual(uidLine.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().map(String.init), Array(repeating: "\(uid)", count: 4), "real, effective, saved and filesystem uid are all nobody's")
        XCTAssertEqual(try TCP.exchange(port: port, Array("unprivileged".utf8)), Array("unprivileged".utf8), tunneld.log)
        let answer = try runProgram(TunneldProcess.binary, ["status", "--socket", controlDirectory + "/control.sock"])
        XCTAssertEqual(answer.status, 0, answer.error)
    }

    func testStatusReportsStatesAndCounters() throws {
        let port = TCP.freePort()
        let refusedPort = TCP.freePort()
        let socketPath = ScratchDirectory("ctl").file("control.sock")
        let tunneld = try TunneldProcess(stanzas: [
            "defaults": "defaults { control_socket = \(socketPath) }\n",
            "a": stanza("a", port: port, via: sshd, target: echo.port),
            "b": stanza("b", port: refusedPort, via: sshd, target: echo.port, extra: "    only_from = 192.0.2.1"),
        ])
        for _ in 0..<3 { XCTAssertEqual(try TCP.exchange(port: port, Array("12345".utf8)), Array("12345".utf8)) }
        let fd = try TCP.connect(port: refusedPort)
        _ = try TCP.readAll(fd)
        close(fd)
        XCTAssertTrue(tunneld.waitForLog("access:", timeout: 2))

        var info = stat()
        XCTAssertEqual(stat(socketPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "only the owner may ask")

        let result = try runProgram(TunneldProcess.binary, ["status", "--json", "--socket", socketPath])
        XCTAssertEqual(result.status, 0, result.error)
        let report = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]
        let services = try XCTUnwrap(report?["services"] as? [[String: Any]])
        let a = try XCTUnwrap(services.first { $0["name"] as? String == "a" })
        XCTAssertEqual(a["session"] as? String, "up")
        XCTAssertEqual(a["totalConnections"] as? Int, 3)
        XCTAssertEqual(a["liveConnections"] as? Int, 0)
        XCTAssertEqual(a["bytesUp"] as? Int, 15)
        XCTAssertEqual(a["bytesDown"] as? Int, 15)
        let b = try XCTUnwrap(services.first { $0["name"] as? String == "b" })
        XCTAssertEqual(b["session"] as? String, "up", "b shares a's session (same server, user and keys)")
        XCTAssertEqual(b["refusals"] as? [String: Int], ["access": 1])
        XCTAssertEqual(b["lastError"] as? String, "access: not in only_from")

        let table = try runProgram(TunneldProcess.binary, ["status", "--socket", socketPath])
        XCTAssertTrue(table.output.contains("b refused: access 1"), table.output)

        let metrics = try runProgram(TunneldProcess.binary, ["status", "--format=prometheus", "--socket", socketPath])
        XCTAssertEqual(metrics.status, 0, metrics.error)
        let parsed = try PrometheusText(metrics.output)
        XCTAssertEqual(parsed.samples[#"tunneld_connections_total{service="a",result="ok"}"#], 3, metrics.output)
        XCTAssertEqual(parsed.samples[#"tunneld_connections_total{service="b",result="access"}"#], 1)
        XCTAssertEqual(parsed.samples[#"tunneld_connections_active{service="a"}"#], 0)
        XCTAssertEqual(parsed.samples[#"tunneld_bytes_total{service="a",direction="up"}"#], 15)
        XCTAssertEqual(parsed.samples[#"tunneld_channel_open_seconds_count{service="a"}"#], 3)
        XCTAssertEqual(parsed.samples[#"tunneld_channel_open_seconds_bucket{service="a",le="+Inf"}"#], 3)
        XCTAssertEqual(parsed.samples[#"tunneld_sessions_up{server="\#(sshd.user)@127.0.0.1:\#(sshd.port)"}"#], 1)
        XCTAssertEqual(parsed.types["tunneld_channel_open_seconds"], "histogram")

        // Values move as connections are made.
        XCTAssertEqual(try TCP.exchange(port: port, Array("more".utf8)), Array("more".utf8))
        let later = try PrometheusText(try runProgram(TunneldProcess.binary, ["status", "--format", "prometheus", "--socket", socketPath]).output)
        XCTAssertEqual(later.samples[#"tunneld_connections_total{service="a",result="ok"}"#], 4)
        XCTAssertEqual(later.samples[#"tunneld_bytes_total{service="a",direction="down"}"#], 19)
        XCTAssertGreaterThan(later.samples[#"tunneld_session_age_seconds{server="\#(sshd.user)@127.0.0.1:\#(sshd.port)"}"#] ?? 0, 0)
    }

    func testReconnectReplacesASilentlyDeadSessionAndStatusShowsTheConnectError() throws {
        let port = TCP.freePort()
        let downPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "a": stanza("a", port: port, via: sshd, target: echo.port, extra: "    keepalive = 60 3"),
            "down": """
                service down
                {
                    port            = \(downPort)
                    server          = nobody@127.0.0.1:\(TCP.freePort())
                    server_args     = 127.0.0.1 9
                    identity        = \(sshd.userKey)
                    identity_agent  = none
                    known_hosts     = \(sshd.knownHosts)
                }

                """,
        ])
        let socketPath = tunneld.directory.file("control.sock")
        XCTAssertEqual(try TCP.exchange(port: port, Array("before".utf8)), Array("before".utf8))
        // The server's side of the session freezes: without a hint, the next client would
        // wait for keepalives (60 s here).
        sshd.signalSessions(SIGSTOP)
        defer { sshd.signalSessions(SIGCONT) }
        let answer = try runProgram(TunneldProcess.binary, ["reconnect", "--socket", socketPath])
        XCTAssertEqual(answer.status, 0, answer.error)
        XCTAssertEqual(answer.output, "reconnecting 2 servers\n")
        let started = Date()
        XCTAssertEqual(try TCP.exchange(port: port, Array("after".utf8), timeout: 10), Array("after".utf8))
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5, "the client gets a fresh session, not the frozen one")
        XCTAssertTrue(tunneld.waitForLog("no answer from the server within 3 s", timeout: 5), "the frozen session ends: \(tunneld.log)")

        let unknown = try runProgram(TunneldProcess.binary, ["reconnect", "--socket", socketPath, "nosuch"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.error.contains("no service named nosuch"), unknown.error)

        // A server that cannot be reached: its last error, when, and (for clients) no retry loop.
        let fd = try TCP.connect(port: downPort)
        XCTAssertEqual(try TCP.readAll(fd), [])
        close(fd)
        let table = try runProgram(TunneldProcess.binary, ["status", "--socket", socketPath])
        XCTAssertTrue(table.output.contains("last failed to connect at "), table.output)
        XCTAssertTrue(table.output.contains(": 127.0.0.1 refused"), "the address tried and how it failed: \(table.output)")
        tunneld.signal(SIGUSR1)
        XCTAssertTrue(tunneld.waitForLog("services=all", count: 2, timeout: 5), tunneld.log)
    }

    func testAProbedPersistentServiceShowsItsTargetGoingDownBeforeAnyClientTries() throws {
        let target = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "kiosk": stanza("kiosk", port: port, via: sshd, target: target.port, extra: "    persistent = yes\n    probe = 0.3"),
        ])
        let socketPath = tunneld.directory.file("control.sock")
        func status() throws -> String {
            try runProgram(TunneldProcess.binary, ["status", "--socket", socketPath]).output
        }
        XCTAssertTrue(waitUntil(timeout: 5) { (try? status())?.contains("kiosk probe: ok at ") ?? false }, (try? status()) ?? "")
        let connectionsBefore = target.connectionCount
        XCTAssertGreaterThan(connectionsBefore, 0, "the probe reached the target")

        // The target stops: status says so within a probe interval or two, with no client.
        target.stop()
        XCTAssertTrue(waitUntil(timeout: 3) { (try? status())?.contains("kiosk probe: refused: connect failed") ?? false }, (try? status()) ?? "")
        let metrics = try PrometheusText(try runProgram(TunneldProcess.binary, ["status", "--format", "prometheus", "--socket", socketPath]).output)
        XCTAssertEqual(metrics.samples[#"tunneld_probe_up{service="kiosk"}"#], 0)
        XCTAssertEqual(metrics.samples[#"tunneld_connections_total{service="kiosk",result="ok"}"#], 0, "probes are not connections")
        XCTAssertEqual(sshd.acceptedLogins, 1, "probes ride the persistent session")
    }

    func testSystemdNotificationsAndSocketActivation() throws {
        let directory = ScratchDirectory("notify")
        let notifyPath = directory.file("notify.sock")
        let notify = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(notify) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(notifyPath.utf8)) }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(notify, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(bound, 0)
        TCP.setTimeout(notify, 10)

        // A launcher in the role of systemd: it binds the socket and passes it as fd 3.
        let port = TCP.freePort()
        let launcher = directory.write("launch.py", """
            import os, socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port))); s.listen(16)
            os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
            os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="passed")
            os.execv(sys.argv[1], sys.argv[1:])
            """)
        let tunneld = try TunneldProcess(
            stanzas: ["passed": stanza("passed", port: port, via: sshd, target: echo.port)],
            environment: ["NOTIFY_SOCKET": notifyPath],
            wrapper: ["/usr/bin/env", "python3", launcher])
        func next() -> String {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(notify, &buffer, buffer.count, 0)
            return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : "(nothing)"
        }
        XCTAssertTrue(next().hasPrefix("READY=1\nSTATUS=serving 1 service: passed"))
        XCTAssertTrue(tunneld.log.contains("listening on a socket from systemd"), tunneld.log)
        XCTAssertEqual(try TCP.exchange(port: port, Array("activated".utf8)), Array("activated".utf8))
        tunneld.signal(SIGHUP)
        XCTAssertTrue(next().hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        XCTAssertTrue(next().hasPrefix("READY=1"))
        tunneld.signal(SIGTERM)
        XCTAssertTrue(next().hasPrefix("STOPPING=1"))
        XCTAssertEqual(tunneld.terminate(), 0)
    }

    func testStdioModeWorksAsAProxyCommand() throws {
        // The service's target is the sshd itself: ssh logs in through tunneld --stdio.
        let directory = ScratchDirectory("stdio")
        directory.write("services.d/jump", stanza("jump", port: TCP.freePort(), via: sshd, target: sshd.port))
        let proxy = "\(TunneldProcess.binary) -f \(directory.file("services.d")) --stdio jump"
        let result = try runProgram("/usr/bin/ssh", [
            "-o", "ProxyCommand=\(proxy)", "-i", sshd.userKey, "-o", "UserKnownHostsFile=\(sshd.knownHosts)",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "HostKeyAlias=[127.0.0.1]:\(sshd.port)",
            "\(sshd.user)@jump", "echo", "through-the-tunnel",
        ], environment: ["PATH": "/usr/bin:/bin", "HOME": directory.path])
        XCTAssertEqual(result.output.trimmingCharacters(in: .whitespacesAndNewlines), "through-the-tunnel", result.error)
        XCTAssertEqual(sshd.acceptedLogins, 2, "one session for tunneld, one for ssh inside it")
    }

    func testCheckCommand() throws {
        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("services.d").path
        let good = try runProgram(TunneldProcess.binary, ["--check", "-f", examples])
        XCTAssertEqual(good.status, 0, good.output)
        XCTAssertTrue(good.output.contains("configuration OK"), good.output)

        let directory = ScratchDirectory("check")
        directory.write("services.d/good", stanza("good", port: 7001, via: sshd, target: echo.port))
        directory.write("services.d/bad", "service bad\n{\n    port = 7002\n    server = h\n    server_args = localhost\n}\n")
        let bad = try runProgram(TunneldProcess.binary, ["--check", "-f", directory.file("services.d")])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.output.contains("services.d/bad:5: error: bad: server_args 'localhost' is not HOST PORT"), bad.output)
        XCTAssertTrue(bad.output.split(separator: "\n").contains { $0.hasPrefix("good ") && $0.contains("127.0.0.1:7001") }, "the good service is still listed: \(bad.output)")

        // --connect logs in and opens each channel once.
        try sshd.writeAuthorizedKeys(options: "restrict,port-forwarding,permitopen=\"127.0.0.1:\(echo.port)\"")
        let other = TCP.freePort()
        directory.write("services.d/bad", stanza("refused", port: 7003, via: sshd, target: other))
        let connect = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("services.d")], environment: ["HOME": directory.path, "PATH": "/usr/bin:/bin"])
        XCTAssertEqual(connect.status, 1, connect.output + connect.error)
        XCTAssertTrue(connect.output.contains("good: channel to 127.0.0.1:\(echo.port) via"), connect.output)
        XCTAssertTrue(connect.output.contains("error: refused: cannot reach 127.0.0.1:\(other) via \(sshd.user)@127.0.0.1:\(sshd.port): refused: administratively prohibited"), connect.output)
    }
}
