import Foundation
import Glibc
import XCTest

/// What another account on the same machine can do to a daemon run by root (issue 22).
final class LocalAttackerTests: SSHTestCase {
    /// Whether a client of `port` gets its bytes back through the tunnel.
    private func echoes(_ port: UInt16) -> Bool {
        (try? TCP.exchange(port: port, Array("ping".utf8), timeout: 10)) == Array("ping".utf8)
    }

    /// A stanza that another account can write is refused at start and on reload, and the
    /// services of the other files run; once it is fixed, a reload adds it.
    func test01_AnOtherWritableStanzaIsRefusedAndTheOthersRun() throws {
        let outside = ScratchDirectory("writable")
        let goodPort = TCP.freePort()
        let includedPort = TCP.freePort()
        let included = outside.write("included", stanza("included", port: includedPort, via: sshd, target: echo.port), mode: 0o666)
        chmod(included, 0o666)
        let tunneld = try TunneldProcess(stanzas: [
            "good": stanza("good", port: goodPort, via: sshd, target: echo.port),
            "includer": "include \(included)\n",
        ])
        XCTAssertTrue(tunneld.log.contains("error: \(included): writable by group and others: refused; chmod go-w \(included)"), tunneld.log)
        XCTAssertTrue(echoes(goodPort), tunneld.log)
        XCTAssertThrowsError(try TCP.connect(port: includedPort, timeout: 1), "the refused file's service does not listen")

        let dropped = tunneld.directory.write("services.d/dropped", stanza("dropped", port: TCP.freePort(), via: sshd, target: echo.port))
        chmod(dropped, 0o646)
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded:", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("error: \(dropped): writable by others: refused"), tunneld.log)
        XCTAssertFalse(tunneld.log.contains("reload refused"), "the refused file is skipped, the reload goes on: \(tunneld.log)")
        XCTAssertTrue(echoes(goodPort), tunneld.log)

        chmod(included, 0o644)
        tunneld.signal(SIGHUP)
        XCTAssertTrue(tunneld.waitForLog("reloaded:", count: 2, timeout: 5), tunneld.log)
        XCTAssertTrue(echoes(includedPort), tunneld.log)
        XCTAssertEqual(tunneld.terminate(), 0)
    }

    /// A private key named as password_file is never sent: --check refuses it.
    func test02_APrivateKeyGivenAsPasswordFileIsRefused() throws {
        let directory = ScratchDirectory("keypw")
        let config = directory.write("services.d/s", stanza("s", port: TCP.freePort(), via: sshd, target: echo.port, extra: "    password_file = \(sshd.userKey)"))
        let check = try runProgram(TunneldProcess.binary, ["--check", "-f", (config as NSString).deletingLastPathComponent])
        XCTAssertNotEqual(check.status, 0)
        XCTAssertTrue(check.output.contains("password_file \(sshd.userKey) looks like a private key, not a password: refused"), check.output + check.error)
        XCTAssertFalse((check.output + check.error).contains("PRIVATE KEY"))
    }

    // MARK: control socket and metrics

    /// A Unix stream socket connected to `path` without waiting (nil when the backlog is full).
    private func unixConnect(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// A Unix socket listening at `path` that never accepts.
    private func unixListen(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        listen(fd, 16)
        return fd
    }

    /// Sends one byte every 0.8 s on `fd` until `stop` is set.
    private func trickle(_ fd: Int32, byte: UInt8 = UInt8(ascii: "s"), until stop: StopFlag) -> Thread {
        let thread = Thread {
            var byte = byte
            while !stop.isSet {
                _ = send(fd, &byte, 1, Int32(MSG_NOSIGNAL))
                Thread.sleep(forTimeInterval: 0.8)
            }
        }
        thread.start()
        return thread
    }

    /// 200 clients that connect and say nothing, and one that trickles its request, do not
    /// keep `tunneld status` from its answer.
    func test03_SilentControlClientsDoNotStallStatus() throws {
        let tunneld = try TunneldProcess(stanzas: ["good": stanza("good", port: TCP.freePort(), via: sshd, target: echo.port)])
        let socketPath = tunneld.directory.file("control.sock")
        let stop = StopFlag()
        defer { stop.set() }
        var silent: [Int32] = []
        defer { silent.forEach { close($0) } }
        for _ in 0..<200 { if let fd = unixConnect(socketPath) { silent.append(fd) } }
        // Before, a full backlog kept this one out too.
        let trickler = unixConnect(socketPath)
        defer { trickler.map { close($0) } }
        if let trickler { _ = trickle(trickler, until: stop) }
        for _ in 0..<3 {
            let started = Date()
            let status = try runProgram(TunneldProcess.binary, ["status", "--socket", socketPath], timeout: 10)
            let took = Date().timeIntervalSince(started)
            XCTAssertEqual(status.status, 0, status.error)
            XCTAssertTrue(status.output.contains("good"), status.output + status.error)
            XCTAssertLessThan(took, 1, "status answered in \(took) s with \(silent.count) silent clients")
        }
        XCTAssertTrue(tunneld.isRunning)
    }

    /// `tunneld status` fails, with a message, against a daemon that never answers or stops in
    /// the middle of its answer: it never prints nothing and exits 0.
    func test04_StatusFailsWhenTheAnswerNeverComesOrIsCut() throws {
        let directory = ScratchDirectory("mute")
        let mute = directory.file("mute.sock")
        let muteFD = unixListen(mute)
        defer { close(muteFD) }
        var started = Date()
        let never = try runProgram(TunneldProcess.binary, ["status", "--socket", mute], timeout: 20)
        XCTAssertNotEqual(never.status, 0, never.output)
        XCTAssertTrue(never.error.contains("tunneld at \(mute) did not answer within 5 s"), never.error)
        XCTAssertLessThan(Date().timeIntervalSince(started), 7)

        // One that accepts and sends a byte every 0.8 s, never closing.
        let slow = directory.file("slow.sock")
        let slowFD = unixListen(slow)
        defer { close(slowFD) }
        let stop = StopFlag()
        defer { stop.set() }
        let server = Thread {
            let client = accept(slowFD, nil, nil)
            var byte = UInt8(ascii: "x")
            while !stop.isSet {
                _ = send(client, &byte, 1, Int32(MSG_NOSIGNAL))
                Thread.sleep(forTimeInterval: 0.8)
            }
            close(client)
        }
        server.start()
        started = Date()
        let cut = try runProgram(TunneldProcess.binary, ["status", "--socket", slow], timeout: 20)
        XCTAssertNotEqual(cut.status, 0, cut.output)
        XCTAssertTrue(cut.error.contains("sent part of an answer"), cut.error)
        XCTAssertLessThan(Date().timeIntervalSince(started), 7)

        let reconnect = try runProgram(TunneldProcess.binary, ["reconnect", "--socket", mute], timeout: 20)
        XCTAssertNotEqual(reconnect.status, 0)
        XCTAssertTrue(reconnect.error.contains("did not answer"), reconnect.error)
    }

    /// A metrics client that trickles its request and 500 idle ones do not keep a scraper
    /// from its metrics.
    func test05_TricklingAndIdleMetricsClientsDoNotStallAScrape() throws {
        let metricsPort = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "00-metrics": "defaults { metrics = 127.0.0.1:\(metricsPort) }\n",
            "good": stanza("good", port: TCP.freePort(), via: sshd, target: echo.port),
        ])
        let stop = StopFlag()
        defer { stop.set() }
        let trickler = try TCP.connect(port: metricsPort)
        defer { close(trickler) }
        _ = trickle(trickler, byte: UInt8(ascii: "G"), until: stop)
        var idle: [Int32] = []
        defer { idle.forEach { close($0) } }
        for _ in 0..<500 { if let fd = try? TCP.connect(port: metricsPort, timeout: 2) { idle.append(fd) } }
        for _ in 0..<3 {
            let scrape = try runProgram("/usr/bin/curl", ["-sS", "-m", "2", "http://127.0.0.1:\(metricsPort)/metrics"], timeout: 10)
            XCTAssertEqual(scrape.status, 0, scrape.error + tunneld.log.suffix(2000))
            XCTAssertTrue(scrape.output.contains("tunneld_connections_total"), scrape.output)
        }
        // The idle ones are closed within their second.
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertLessThan(openDescriptors(of: tunneld.pid), 100, "idle metrics clients are closed")
    }

    /// `metrics = unix:PATH` serves the same on a Unix socket of mode 0600.
    func test06_MetricsOnAUnixSocket() throws {
        let directory = ScratchDirectory("metrics")
        let path = directory.file("metrics.sock")
        let second = try TunneldProcess(stanzas: [
            "00-metrics": "defaults { metrics = unix:\(path) }\n",
            "other": stanza("other", port: TCP.freePort(), via: sshd, target: echo.port),
        ])
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0, second.log)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
        let scrape = try runProgram("/usr/bin/curl", ["-sS", "-m", "2", "--unix-socket", path, "http://localhost/metrics"], timeout: 10)
        XCTAssertEqual(scrape.status, 0, scrape.error + second.log)
        XCTAssertTrue(scrape.output.contains(#"tunneld_connections_total{service="other""#), scrape.output)
        XCTAssertEqual(second.terminate(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "removed at exit")
    }

    // MARK: permits

    /// A name that starts like a permitted address (which the attacker's DNS may point
    /// anywhere) and a name with a space are refused at once, before any SSH session.
    func test07_ANameNeverPassesAnAddressPattern() throws {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "proxy": socksStanza("proxy", port: port, via: sshd, extra: "    permit          = 127.0.0.*:\(echo.port) *.example.org:443"),
        ])
        let target = [UInt8(echo.port >> 8), UInt8(echo.port & 0xff)]
        let lookalike = Array("127.0.0.1.attacker.example".utf8)
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 3, UInt8(lookalike.count)] + lookalike + target), [5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
        XCTAssertTrue(tunneld.waitForLog("target=127.0.0.1.attacker.example:\(echo.port)", timeout: 2), "the refusal names the target: \(tunneld.log)")
        let spaced = Array("127.0.0.1 .example.org".utf8)
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 3, UInt8(spaced.count)] + spaced + [1, 0xbb]), [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0])
        XCTAssertTrue(tunneld.waitForLog("which is not a host name", timeout: 2), tunneld.log)
        // A bidi override in a name is refused too, and logged escaped, never raw.
        let reversed = Array("gro.elpmaxe\u{202E}.www".utf8)
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 3, UInt8(reversed.count)] + reversed + [1, 0xbb]), [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0])
        XCTAssertTrue(tunneld.waitForLog("gro.elpmaxe\\u{202e}.www", timeout: 2), tunneld.log)
        XCTAssertFalse(tunneld.log.unicodeScalars.contains("\u{202E}"), "no raw bidi control in the log")
        XCTAssertEqual(sshd.acceptedLogins, 0, "no SSH session for any of them")
        // The address itself passes; the bytes sent with the request count in bytes.up.
        XCTAssertEqual(try TCP.sendThenRead(port: port, [5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1] + target + Array("hi".utf8)).suffix(2), Array("hi".utf8), tunneld.log)
        XCTAssertTrue(tunneld.waitForLog("bytes.down=2 bytes.up=2", timeout: 3), tunneld.log)
    }

    // MARK: privileges

    /// After the switch to run_as, nothing the daemon runs can gain privileges again.
    func test08_NoNewPrivilegesAfterTheSwitch() throws {
        try XCTSkipIf(geteuid() != 0, "only root can switch accounts")
        let scratch = ScratchDirectory("nnp")
        chmod(scratch.path, 0o755)
        let tunneld = try TunneldProcess(stanzas: [
            "00-defaults": "defaults { run_as = nobody\n control_socket = \(scratch.file("run/control.sock")) }\n",
            "a": "service a { port = \(TCP.freePort())\n server = 127.0.0.1\n server_args = localhost 25 }\n",
        ])
        XCTAssertTrue(tunneld.log.contains("switched to run_as account"), tunneld.log)
        let status = try String(contentsOfFile: "/proc/\(tunneld.pid)/status", encoding: .utf8)
        XCTAssertTrue(status.contains("NoNewPrivs:\t1"), status)
    }

    /// A metrics port below 1024 is bound before the switch to run_as, so it works.
    func test10_AMetricsPortBelow1024WorksWithRunAs() throws {
        try XCTSkipIf(geteuid() != 0, "only root binds a port below 1024")
        let low = try XCTUnwrap((900..<1000).map(UInt16.init).first { port in
            guard let (fd, _) = try? TCP.listen(port: port) else { return false }
            close(fd)
            return true
        }, "no free port below 1024")
        let scratch = ScratchDirectory("lowmetrics")
        chmod(scratch.path, 0o755)
        let tunneld = try TunneldProcess(stanzas: [
            "00-defaults": "defaults { run_as = nobody\n metrics = 127.0.0.1:\(low)\n control_socket = \(scratch.file("run/control.sock")) }\n",
            "a": "service a { port = \(TCP.freePort())\n server = 127.0.0.1\n server_args = localhost 25 }\n",
        ])
        XCTAssertTrue(tunneld.log.contains("switched to run_as account"), tunneld.log)
        XCTAssertFalse(tunneld.log.contains("cannot serve metrics"), tunneld.log)
        let scrape = try runProgram("/usr/bin/curl", ["-sS", "-m", "2", "http://127.0.0.1:\(low)/metrics"], timeout: 10)
        XCTAssertEqual(scrape.status, 0, scrape.error + tunneld.log)
        XCTAssertTrue(scrape.output.contains("tunneld_connections_total"), scrape.output)
    }

    // MARK: host keys

    /// known_hosts with the server's right ECDSA key first and a wrong Ed25519 key after it:
    /// the server offers Ed25519 too, so, as with OpenSSH, that is a changed host key.
    func test09_ARightKeyOfOneTypeDoesNotHideAWrongKeyOfAnother() throws {
        let keys = ScratchDirectory("hostkeys")
        let ecdsa = keys.file("host_ecdsa")
        _ = try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ecdsa", "-N", "", "-f", ecdsa])
        let server = try SSHServer(extraConfig: "HostKey \(ecdsa)")
        let right = try String(contentsOfFile: ecdsa + ".pub", encoding: .utf8).split(separator: " ")
        let wrong = "AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWs="
        let name = "[127.0.0.1]:\(server.port)"
        server.directory.write("known_hosts", "\(name) \(right[0]) \(right[1])\n\(name) ssh-ed25519 \(wrong)\n")
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["echo": stanza("echo", port: port, via: server, target: echo.port)])
        let fd = try TCP.connect(port: port)
        defer { close(fd) }
        XCTAssertEqual(try TCP.readAll(fd), [], "refused")
        XCTAssertTrue(tunneld.waitForLog("HOST KEY CHANGED", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains("\(server.knownHosts):2"), "names the Ed25519 line: \(tunneld.log)")
        XCTAssertEqual(echo.connectionCount, 0)
    }
}

/// A flag one thread sets and others read.
private final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool { lock.withLock { value } }

    func set() { lock.withLock { value = true } }
}
