import Foundation
import Glibc
import XCTest

/// Hostile and broken peers, a soak, and secrets kept out of the logs (issue 6).
final class HardeningTests: XCTestCase {
    /// A fake SSH server on 127.0.0.1 that misbehaves in one way for every connection.
    private final class HostileServer {
        enum Behaviour {
            case silent
            case garbageBanner
            case stallAfterBanner
        }

        let port: UInt16
        private let listener: Int32
        private var clients: [Int32] = []
        private let lock = NSLock()

        init(_ behaviour: Behaviour) throws {
            (listener, port) = try TCP.listen()
            let listener = listener
            Thread { [weak self] in
                while true {
                    let fd = accept(listener, nil, nil)
                    if fd < 0 { return }
                    switch behaviour {
                    case .silent: break
                    case .garbageBanner: _ = try? TCP.sendAll(fd, Array("HTTP/1.1 400 Bad Request\r\n\r\n\u{0}\u{1}garbage".utf8))
                    case .stallAfterBanner: _ = try? TCP.sendAll(fd, Array("SSH-2.0-OpenSSH_9.2 stalled\r\n".utf8))
                    }
                    guard let self else { close(fd); return }
                    self.lock.lock()
                    self.clients.append(fd)
                    self.lock.unlock()
                }
            }.start()
        }

        deinit {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
            lock.lock()
            clients.forEach { close($0) }
            lock.unlock()
        }
    }

    private func hostileStanza(_ name: String, port: UInt16, server: UInt16, directory: ScratchDirectory) -> String {
        let key = directory.file("id_\(name)")
        if !FileManager.default.fileExists(atPath: key) {
            _ = try? runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])
        }
        return """
            service \(name)
            {
                port            = \(port)
                server          = tester@127.0.0.1:\(server)
                server_args     = 127.0.0.1 9
                identity        = \(key)
                identity_agent  = none
                host_key        = accept-new
                known_hosts     = \(directory.file("known_hosts"))
                connect_timeout = 1.5
            }

            """
    }

    func testHostileServersCloseTheClientWithinConnectTimeoutAndHurtNoOneElse() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let directory = ScratchDirectory("hostile")
        let servers: [(String, HostileServer)] = [
            ("silent", try HostileServer(.silent)),
            ("garbage", try HostileServer(.garbageBanner)),
            ("stalled", try HostileServer(.stallAfterBanner)),
        ]
        var stanzas: [String: String] = [:]
        var ports: [String: UInt16] = [:]
        for (name, server) in servers {
            ports[name] = TCP.freePort()
            stanzas[name] = hostileStanza(name, port: ports[name]!, server: server.port, directory: directory)
        }
        let goodPort = TCP.freePort()
        stanzas["good"] = stanza("good", port: goodPort, via: sshd, target: echo.port)
        let tunneld = try TunneldProcess(stanzas: stanzas)

        for (name, _) in servers {
            let fd = try TCP.connect(port: ports[name]!, timeout: 10)
            let started = Date()
            XCTAssertEqual(try TCP.readAll(fd), [], name)
            close(fd)
            let seconds = Date().timeIntervalSince(started)
            print("hostile server \(name): client closed after \(String(format: "%.2f", seconds)) s")
            XCTAssertLessThan(seconds, 2.5, "\(name): closed within connect_timeout (1.5 s)")
            XCTAssertEqual(try TCP.exchange(port: goodPort, Array(name.utf8)), Array(name.utf8), "other services are unaffected")
        }
        XCTAssertTrue(tunneld.waitForLog("session connect failed", count: 3, timeout: 3), tunneld.log)
        XCTAssertTrue(tunneld.isRunning)
        let failures = tunneld.logLines.filter { $0.contains("session connect failed") }
        XCTAssertEqual(failures.count, 3, failures.joined(separator: "\n"))
    }

    func testAServerThatDropsTheSessionRightAfterAuthentication() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": stanza("s", port: port, via: sshd, target: echo.port)])
        // Kill every session process as soon as sshd says it accepted the login.
        let killer = Thread {
            var killed = 0
            let until = Date().addingTimeInterval(8)
            while Date() < until && killed < 2 {
                if sshd.acceptedLogins > killed {
                    sshd.killSessions()
                    killed = sshd.acceptedLogins
                }
                usleep(200)
            }
        }
        killer.start()
        let fd = try TCP.connect(port: port, timeout: 10)
        let started = Date()
        try? TCP.sendAll(fd, Array("hello".utf8))
        let reply = (try? TCP.readAll(fd)) ?? []
        close(fd)
        let seconds = Date().timeIntervalSince(started)
        print("server dropping the session after auth: client closed after \(String(format: "%.2f", seconds)) s, reply \(reply.count) bytes")
        XCTAssertLessThan(seconds, 3, "closed promptly, not hung")
        XCTAssertTrue(reply.isEmpty || reply == Array("hello".utf8), "nothing but what the target sent")
        while !killer.isFinished { usleep(10_000) }
        XCTAssertTrue(tunneld.isRunning)
        // Once the server behaves, the next client works.
        XCTAssertTrue(waitUntil(timeout: 10) { (try? TCP.exchange(port: port, Array("later".utf8), timeout: 5)) == Array("later".utf8) }, tunneld.log)
    }

    func testATargetThatNeverAnswersAndClientsThatResetDoNotHurtOthers() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        // A target that accepts and then neither reads nor writes.
        let (mute, mutePort) = try TCP.listen()
        defer { close(mute) }
        let port = TCP.freePort()
        let mutedPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "echo": stanza("echo", port: port, via: sshd, target: echo.port, extra: "    instances = 50"),
            "mute": stanza("mute", port: mutedPort, via: sshd, target: mutePort),
        ])
        // A client pushing 256 MiB at the mute target: memory stays bounded.
        let pusher = try TCP.connect(port: mutedPort, timeout: 0.2)
        defer { close(pusher) }
        let chunk = [UInt8](repeating: 0x55, count: 256 * 1024)
        var pushed = 0
        let until = Date().addingTimeInterval(3)
        while pushed < 256 << 20 && Date() < until {
            let sent = chunk.withUnsafeBytes { send(pusher, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent > 0 { pushed += sent }
        }
        // Idle clients that send nothing fill the instances limit, no more.
        var idle: [Int32] = []
        for _ in 0..<60 { if let fd = try? TCP.connect(port: port) { idle.append(fd) } }
        XCTAssertTrue(tunneld.waitForLog("limit: instances", count: 10, timeout: 3), tunneld.log)
        idle.forEach { close($0) }

        // Thousands of connect-and-reset.
        for _ in 0..<2000 {
            guard let fd = try? TCP.connect(port: port) else { continue }
            var reset = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
            close(fd)
        }
        XCTAssertTrue(waitUntil(timeout: 20) { (try? TCP.exchange(port: port, Array("still".utf8), timeout: 5)) == Array("still".utf8) }, tunneld.log)
        let rss = tunneld.residentKiB
        print("pushed \(pushed >> 20) MiB at a mute target; tunneld RSS \(rss / 1024) MiB")
        if memoryBoundsApply { XCTAssertLessThan(rss, 100 * 1024) }
        XCTAssertTrue(tunneld.isRunning)
    }

    func testSoakOfTenThousandConnectionsReturnsToBaseline() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["soak": stanza("soak", port: port, via: sshd, target: echo.port, extra: "    sessions = 1")])
        XCTAssertEqual(try TCP.exchange(port: port, [0]), [0])
        Thread.sleep(forTimeInterval: 0.2)
        let baselineFDs = openDescriptors(of: tunneld.pid)
        let baselineRSS = tunneld.residentKiB

        let total = 10_000
        let wave = 100
        let failures = FailureList()
        var verifiedBytes = 0
        let started = Date()
        for waveStart in stride(from: 0, to: total, by: wave) {
            let group = DispatchGroup()
            let waveBytes = FailureList()
            for index in waveStart..<(waveStart + wave) {
                group.enter()
                DispatchQueue.global().async {
                    defer { group.leave() }
                    do {
                        if index % 10 == 9 {
                            // Some leave mid-transfer, with a reset.
                            let fd = try TCP.connect(port: port)
                            try TCP.sendAll(fd, randomBytes(32 * 1024))
                            var reset = linger(l_onoff: 1, l_linger: 0)
                            setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
                            close(fd)
                        } else {
                            let bytes = randomBytes(1024 + index % 4096)
                            if try TCP.exchange(port: port, bytes) == bytes {
                                waveBytes.append("\(bytes.count)")
                            } else {
                                failures.append("connection \(index): bytes differ")
                            }
                        }
                    } catch {
                        failures.append("connection \(index): \(error)")
                    }
                }
            }
            XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
            verifiedBytes += waveBytes.all.reduce(0) { $0 + Int($1)! }
        }
        let seconds = Date().timeIntervalSince(started)
        XCTAssertEqual(failures.all, [])
        XCTAssertTrue(waitUntil(timeout: 10) { openDescriptors(of: tunneld.pid) <= baselineFDs }, "descriptors return to baseline: \(openDescriptors(of: tunneld.pid)) vs \(baselineFDs)")
        let rss = tunneld.residentKiB
        print("soak: \(total) connections in \(String(format: "%.1f", seconds)) s, \(verifiedBytes) bytes verified each way; fds \(baselineFDs) -> \(openDescriptors(of: tunneld.pid)); RSS \(baselineRSS / 1024) -> \(rss / 1024) MiB")
        if memoryBoundsApply { XCTAssertLessThan(rss, baselineRSS + 32 * 1024, "RSS returns near its baseline") }
        XCTAssertEqual(sshd.acceptedLogins, 1)
    }

    func testAnAgentIsUsedAndAHungAgentCostsOneAttemptNotTheDaemon() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let directory = ScratchDirectory("agent")

        // A real ssh-agent holding the key: the stanza names no key file at all.
        let agentSocket = directory.file("agent.sock")
        let agent = try ChildProcess("/usr/bin/ssh-agent", ["-D", "-a", agentSocket])
        defer { agent.signal(SIGKILL) }
        XCTAssertTrue(waitUntil(timeout: 5) { FileManager.default.fileExists(atPath: agentSocket) })
        let added = try runProgram("/usr/bin/ssh-add", [sshd.userKey], environment: ["SSH_AUTH_SOCK": agentSocket])
        XCTAssertEqual(added.status, 0, added.error)

        // A socket that accepts and never answers, as a stopped agent does.
        let muteSocket = directory.file("mute.sock")
        let mute = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(mute) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(muteSocket.utf8)) }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(mute, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        listen(mute, 16)

        let viaAgent = TCP.freePort()
        let viaMute = TCP.freePort()
        func agentStanza(_ name: String, port: UInt16, agent: String, identity: String) -> String {
            stanza(name, port: port, via: sshd, target: echo.port)
                .replacingOccurrences(of: "identity_agent  = none", with: "identity_agent  = \(agent)")
                .replacingOccurrences(of: "identity        = \(sshd.userKey)", with: identity)
        }
        let tunneld = try TunneldProcess(stanzas: [
            "agent": agentStanza("agent", port: viaAgent, agent: agentSocket, identity: ""),
            "mute": agentStanza("mute", port: viaMute, agent: muteSocket, identity: "identity = \(sshd.userKey)") + "defaults { linger = 0 }\n",
        ])
        XCTAssertEqual(try TCP.exchange(port: viaAgent, Array("agent".utf8)), Array("agent".utf8), tunneld.log)
        let started = Date()
        XCTAssertEqual(try TCP.exchange(port: viaMute, Array("key file".utf8), timeout: 10), Array("key file".utf8), tunneld.log)
        let seconds = Date().timeIntervalSince(started)
        XCTAssertLessThan(seconds, 4, "the mute agent costs its 2 s bound, then the key file logs in")
        XCTAssertEqual(try TCP.exchange(port: viaAgent, Array("still".utf8)), Array("still".utf8), "other services unaffected")
    }

    func testNoSecretsInDebugLogsWithAPassphraseProtectedKey() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let directory = ScratchDirectory("secret")
        let key = directory.file("id_protected")
        let passphrase = "correct horse battery staple 7431"
        try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", passphrase, "-f", key])
        let publicKey = try String(contentsOfFile: key + ".pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        sshd.directory.write("authorized_keys", publicKey + "\n")
        let passphraseFile = directory.write("passphrase", passphrase + "\n", mode: 0o600)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["s": """
            service s
            {
                port                     = \(port)
                server                   = \(sshd.user)@127.0.0.1:\(sshd.port)
                server_args              = 127.0.0.1 \(echo.port)
                identity                 = \(key)
                identity_passphrase_file = \(passphraseFile)
                identity_agent           = none
                known_hosts              = \(sshd.knownHosts)
            }
            """], arguments: ["--debug"])
        XCTAssertEqual(try TCP.exchange(port: port, Array("secret-free".utf8)), Array("secret-free".utf8), tunneld.log)
        _ = tunneld.terminate()
        let log = tunneld.log
        XCTAssertTrue(log.contains("debug"), "the log ran at debug level")
        XCTAssertFalse(log.contains(passphrase), "no passphrase in the log")
        XCTAssertFalse(log.contains("correct horse"), "no part of it either")
        let privateKey = try String(contentsOfFile: key, encoding: .utf8)
        for line in privateKey.split(separator: "\n") where !line.hasPrefix("-----") {
            XCTAssertFalse(log.contains(line), "no private key material in the log")
        }
    }

    func testNonLoopbackBindWithoutOnlyFromIsWarnedAboutAtStart() throws {
        let sshd = try SSHServer()
        let echo = try EchoServer()
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["open": stanza("open", port: port, via: sshd, target: echo.port, extra: "    bind = *")])
        XCTAssertTrue(tunneld.log.contains("beyond this machine, with no only_from"), tunneld.log)
    }
}
