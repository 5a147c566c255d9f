import Foundation
import Glibc
import XCTest

/// Host keys, key files and hostile text against a real sshd (issue 12).
final class SecurityTests: SSHTestCase {
    private let otherHost = "other.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWs="

    private func startTunneld(_ extra: String = "") throws -> (TunneldProcess, UInt16) {
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["echo": stanza("echo", port: port, via: sshd, target: echo.port, extra: extra)])
        return (tunneld, port)
    }

    /// The client is closed without a byte: the tunnel refused it.
    private func assertRefused(_ port: UInt16, file: StaticString = #filePath, line: UInt = #line) throws {
        let fd = try TCP.connect(port: port)
        defer { close(fd) }
        XCTAssertEqual(try TCP.readAll(fd), [], file: file, line: line)
    }

    // MARK: host_key = accept-new

    func test01_AcceptNewAppendsToAKnownHostsThatHoldsOtherHosts() throws {
        for existing in [otherHost + "\n", otherHost] {
            let path = sshd.knownHosts
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(existing.utf8), attributes: [.posixPermissions: 0o600]))
            let (tunneld, port) = try startTunneld("    host_key        = accept-new")
            XCTAssertEqual(try TCP.exchange(port: port, Array("pin".utf8)), Array("pin".utf8), tunneld.log)
            let hostKey = try String(contentsOfFile: sshd.directory.file("host_ed25519.pub"), encoding: .utf8).split(separator: " ")
            let pinned = "[127.0.0.1]:\(sshd.port) \(hostKey[0]) \(hostKey[1])"
            XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), otherHost + "\n" + pinned + "\n", "the old line stays; the new one gets a line of its own")
            var info = stat()
            XCTAssertEqual(stat(path, &info), 0)
            XCTAssertEqual(info.st_mode & 0o777, 0o600, "the file keeps its mode")
            XCTAssertTrue(tunneld.log.contains("pinned new host key"), tunneld.log)
            _ = tunneld.terminate()
        }
    }

    func test02_AcceptNewDoesNotWriteThroughASymlinkOrIntoAnOpenDirectory() throws {
        let real = sshd.directory.write("real_known_hosts", otherHost + "\n")
        try FileManager.default.removeItem(atPath: sshd.knownHosts)
        try FileManager.default.createSymbolicLink(atPath: sshd.knownHosts, withDestinationPath: real)
        let (tunneld, port) = try startTunneld("    host_key        = accept-new")
        try assertRefused(port)
        XCTAssertTrue(tunneld.waitForLog("is a symbolic link", timeout: 3), tunneld.log)
        XCTAssertTrue(tunneld.log.contains(sshd.knownHosts), "the message names the file: \(tunneld.log)")
        XCTAssertFalse(tunneld.log.contains("NSCocoaErrorDomain"), tunneld.log)
        XCTAssertEqual(try String(contentsOfFile: real, encoding: .utf8), otherHost + "\n", "the link's target is untouched")
        XCTAssertEqual(echo.connectionCount, 0)
        _ = tunneld.terminate()

        let open = ScratchDirectory("open")
        chmod(open.path, 0o777)
        let file = open.file("known_hosts")
        let (second, secondPort) = try startTunneld("    host_key        = accept-new\n    known_hosts     = \(file)")
        try assertRefused(secondPort)
        XCTAssertTrue(second.waitForLog("writable by group or others", timeout: 3), second.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file))
        _ = second.terminate()

        guard geteuid() == 0 else { return }
        let foreign = ScratchDirectory("foreign")
        XCTAssertEqual(chown(foreign.path, 65534, 65534), 0)
        let (third, thirdPort) = try startTunneld("    host_key        = accept-new\n    known_hosts     = \(foreign.file("known_hosts"))")
        try assertRefused(thirdPort)
        XCTAssertTrue(third.waitForLog("the directory \(foreign.path) belongs to another account (uid 65534)", timeout: 3), third.log)
    }

    func test02b_ARevokedLineWinsOverAnEarlierLineThatAcceptsTheKey() throws {
        let accepted = try String(contentsOfFile: sshd.knownHosts, encoding: .utf8)
        let key = accepted.split(separator: " ").dropFirst().joined(separator: " ")
        XCTAssertTrue(FileManager.default.createFile(atPath: sshd.knownHosts, contents: Data((accepted + "@revoked * " + key).replacingOccurrences(of: "\n", with: "\r\n").utf8)))
        let (tunneld, port) = try startTunneld()
        try assertRefused(port)
        XCTAssertTrue(tunneld.waitForLog("is marked @revoked at \(sshd.knownHosts):2", timeout: 3), tunneld.log)
        XCTAssertEqual(echo.connectionCount, 0)
    }

    // MARK: fingerprint

    /// Gives sshd an ecdsa host key beside its ed25519 one; returns both fingerprints.
    private func addECDSAHostKey() throws -> (ed25519: String, ecdsa: String) {
        let ecdsa = sshd.directory.file("host_ecdsa")
        try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ecdsa", "-N", "", "-f", ecdsa])
        let config = try String(contentsOfFile: sshd.directory.file("sshd_config"), encoding: .utf8)
        sshd.stop()
        sshd.directory.write("sshd_config", config.replacingOccurrences(of: "HostKey ", with: "HostKey \(ecdsa)\nHostKey "))
        try sshd.start()
        let printed = try runProgram("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", ecdsa + ".pub"]).output
        return (try sshd.hostKeyFingerprint(), String(printed.split(separator: " ")[1]))
    }

    func test03_APinnedFingerprintWorksWhateverKeyTypeTheServerPrefers() throws {
        let fingerprints = try addECDSAHostKey()
        XCTAssertTrue(FileManager.default.createFile(atPath: sshd.knownHosts, contents: Data()))
        func connections() -> Int { sshd.log.components(separatedBy: "Connection from").count - 1 }
        let before = connections()
        for pin in [fingerprints.ed25519, fingerprints.ecdsa] {
            let (tunneld, port) = try startTunneld("    fingerprint     = \(pin)\n    linger          = 0")
            XCTAssertEqual(try TCP.exchange(port: port, Array("pinned".utf8)), Array("pinned".utf8), "pin \(pin): \(tunneld.log)")
            XCTAssertTrue(waitUntil(timeout: 3) { tunneld.log.contains("session down") }, tunneld.log)
            XCTAssertEqual(try TCP.exchange(port: port, Array("again".utf8)), Array("again".utf8), "pin \(pin): \(tunneld.log)")
            _ = tunneld.terminate()
        }
        XCTAssertEqual(connections() - before, 5, "ed25519: two handshakes, then one, as the type is remembered; ecdsa: one each")
        let wrong = "SHA256:" + String(repeating: "A", count: 43)
        let (tunneld, port) = try startTunneld("    fingerprint     = \(wrong)")
        try assertRefused(port)
        XCTAssertTrue(tunneld.waitForLog("not the pinned fingerprint", timeout: 5), tunneld.log)
        XCTAssertTrue(tunneld.log.contains(fingerprints.ed25519) && tunneld.log.contains(fingerprints.ecdsa), "every key the server has is named: \(tunneld.log)")
    }

    // MARK: Key files at connect time

    func test04_AKeyMadeReadableByOthersAfterStartIsRefusedAtConnect() throws {
        let (tunneld, port) = try startTunneld()
        chmod(sshd.userKey, 0o644)
        try assertRefused(port)
        XCTAssertTrue(tunneld.waitForLog("\(sshd.userKey) is readable by group or others", timeout: 3), tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 0)
    }

    // MARK: --check --connect

    func test05_CheckConnectReachesAServerThatSpeaksFirst() throws {
        let smtp = try EchoServer(greeting: "220 mail.example.org ESMTP")
        let directory = ScratchDirectory("check-banner")
        directory.write("services.d/smtp", stanza("smtp", port: TCP.freePort(), via: sshd, target: smtp.port))
        let result = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("services.d")], environment: ["HOME": directory.path, "PATH": "/usr/bin:/bin"])
        XCTAssertEqual(result.status, 0, result.output + result.error)
        XCTAssertTrue(result.output.contains("smtp: channel to 127.0.0.1:\(smtp.port) via"), result.output)
        XCTAssertEqual(smtp.connectionCount, 1)
        XCTAssertTrue(result.error.contains("result=ok"), "the banner is read, not written to a closed end: \(result.error)")

        // A target that talks on and on and never closes: the probe still ends, reachable.
        let (listener, chatty) = try TCP.listen()
        defer { close(listener) }
        Thread {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            _ = try? TCP.sendAll(fd, [UInt8](repeating: 0x41, count: 4 << 20))
            Thread.sleep(forTimeInterval: 10)
            close(fd)
        }.start()
        directory.write("services.d/smtp", stanza("chatty", port: TCP.freePort(), via: sshd, target: chatty))
        let started = Date()
        let second = try runProgram(TunneldProcess.binary, ["--check", "--connect", "-f", directory.file("services.d")], environment: ["HOME": directory.path, "PATH": "/usr/bin:/bin"])
        XCTAssertEqual(second.status, 0, second.output + second.error)
        XCTAssertTrue(second.output.contains("chatty: channel to 127.0.0.1:\(chatty) via"), second.output)
        XCTAssertLessThan(Date().timeIntervalSince(started), 8, "it does not wait for the target to stop talking")
    }

    // MARK: Access

    func test07_AnEmptyOnlyFromAdmitsNobody() throws {
        let (tunneld, port) = try startTunneld("    only_from       =")
        XCTAssertTrue(tunneld.log.contains("only_from is empty, so nobody may connect"), tunneld.log)
        try assertRefused(port)
        XCTAssertTrue(tunneld.waitForLog("result=\"access: not in only_from\"", timeout: 3), tunneld.log)
        XCTAssertEqual(sshd.acceptedLogins, 0)
        XCTAssertEqual(echo.connectionCount, 0)
    }

    func test08_IPv4ClientsMatchIPv4RulesWhateverTheirForm() throws {
        let dualStack = TCP.freePort()
        let mappedRule = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: [
            "dual": stanza("dual", port: dualStack, via: sshd, target: echo.port, extra: "    bind            = ::\n    only_from       = 127.0.0.1"),
            "mapped": stanza("mapped", port: mappedRule, via: sshd, target: echo.port, extra: "    only_from       = ::ffff:127.0.0.0/104"),
        ])
        XCTAssertEqual(try TCP.exchange(port: dualStack, Array("dual".utf8)), Array("dual".utf8), "::ffff:127.0.0.1 on a :: listener is 127.0.0.1: \(tunneld.log)")
        XCTAssertEqual(try TCP.exchange(port: mappedRule, Array("mapped".utf8)), Array("mapped".utf8), "::ffff:127.0.0.0/104 is 127.0.0.0/8: \(tunneld.log)")
    }

    // MARK: Logs

    func test06_OutsideTextCannotForgeOrColourALogLine() throws {
        let directory = ScratchDirectory("log")
        let hostile = directory.file("conf\n2026-01-01T00:00:00.000Z notice forged line\u{1b}[31m\r")
        try FileManager.default.createDirectory(atPath: hostile, withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: hostile + "/s", contents: Data("service s\n{\n    port = 7\u{1b}[2J\n}\n".utf8)))
        let log = directory.file("log")
        let child = try ChildProcess(TunneldProcess.binary, ["-f", hostile], environment: ["HOME": directory.path, "PATH": "/usr/bin:/bin"], error: log)
        XCTAssertEqual(child.wait(timeout: 10), 1, "no service to run")
        let text = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertTrue(text.contains("no service to run"), text)
        XCTAssertFalse(text.contains("\n2026-01-01T00:00:00.000Z notice forged line"), text)
        let controls = text.unicodeScalars.filter { $0 != "\n" && ($0.value < 0x20 || $0.value == 0x7f) }
        XCTAssertEqual(controls.count, 0, "no control character reaches the log: \(text.debugDescription)")
        XCTAssertTrue(text.contains("\\x1b[2J"), "the escape is shown, not sent: \(text)")
        XCTAssertEqual(text.split(separator: "\n").filter { !$0.hasPrefix("20") }.count, 0, "every line is a log line: \(text)")
    }
}
