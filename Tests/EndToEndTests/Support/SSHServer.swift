import Foundation
import Glibc
import XCTest

/// A real OpenSSH sshd on 127.0.0.1 (or `listenAddress`) at a free port, with a throwaway host
/// key and one user key, logging at VERBOSE to a file the tests read. Root or not: it logs in
/// as the account that runs the tests.
final class SSHServer {
    let directory: ScratchDirectory
    let port: UInt16
    /// The private key that `authorized_keys` accepts.
    let userKey: String
    /// A known_hosts file holding this server's host key.
    let knownHosts: String
    let logFile: String
    let user: String
    /// The address it listens on, as clients (and known_hosts) name it.
    let listenAddress: String
    /// A program prefix sshd runs under, e.g. `ip netns exec NS`.
    private let commandPrefix: [String]
    private var process: ChildProcess?
    private var keyOptions: String

    /// - `keyOptions`: `authorized_keys` options for the user key, e.g. `restrict,port-forwarding,permitopen="…"`.
    /// - `extraConfig`: more sshd_config lines, e.g. `RekeyLimit 1M`.
    /// - `listenAddress`: an address to listen on instead of 127.0.0.1 (`::1` for IPv6).
    /// - `commandPrefix`: a program and arguments that run sshd, e.g. `ip netns exec NS`; with
    ///   one, readiness is judged from sshd's log, since its address may not be reachable from here.
    /// - `passwordLogins`: offer `password` and `keyboard-interactive` logins (sshd checks
    ///   /etc/shadow itself: `UsePAM no`).
    /// - `keyboardInteractiveByPAM`: offer `keyboard-interactive` only, run by PAM (`UsePAM yes`),
    ///   which prompts for the password; needs root.
    init(keyOptions: String = "", extraConfig: String = "", listenAddress: String = "127.0.0.1", commandPrefix: [String] = [], passwordLogins: Bool = false, keyboardInteractiveByPAM: Bool = false) throws {
        self.listenAddress = listenAddress
        self.commandPrefix = commandPrefix
        directory = ScratchDirectory("sshd")
        port = TCP.freePort()
        user = String(cString: getpwuid(geteuid()).pointee.pw_name)
        userKey = directory.file("id_ed25519")
        knownHosts = directory.file("known_hosts")
        logFile = directory.file("sshd.log")
        self.keyOptions = keyOptions
        try generateHostKey()
        try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "tunneld-test-user", "-f", userKey])
        try writeAuthorizedKeys(options: keyOptions)
        if geteuid() == 0 { try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true) }
        directory.write("sshd_config", """
            ListenAddress \(listenAddress.contains(":") ? "[\(listenAddress)]" : listenAddress):\(port)
            HostKey \(directory.file("host_ed25519"))
            AuthorizedKeysFile \(directory.file("authorized_keys"))
            PidFile none
            StrictModes no
            UsePAM \(keyboardInteractiveByPAM ? "yes" : "no")
            PasswordAuthentication \(passwordLogins ? "yes" : "no")
            KbdInteractiveAuthentication \(passwordLogins || keyboardInteractiveByPAM ? "yes" : "no")
            PermitRootLogin prohibit-password
            AllowTcpForwarding yes
            MaxStartups 1000
            MaxSessions 1000
            LogLevel VERBOSE
            \(extraConfig)
            """)
        try start()
    }

    deinit {
        stop()
    }

    /// Writes known_hosts afresh with the current host key.
    private func generateHostKey() throws {
        let hostKey = directory.file("host_ed25519")
        try? FileManager.default.removeItem(atPath: hostKey)
        try? FileManager.default.removeItem(atPath: hostKey + ".pub")
        try runProgram("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "tunneld-test-host", "-f", hostKey])
        let publicKey = try String(contentsOfFile: hostKey + ".pub", encoding: .utf8).split(separator: " ")
        directory.write("known_hosts", "[\(listenAddress)]:\(port) \(publicKey[0]) \(publicKey[1])\n")
    }

    /// The host key's `SHA256:` fingerprint.
    func hostKeyFingerprint() throws -> String {
        let output = try runProgram("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", directory.file("host_ed25519.pub")]).output
        return String(output.split(separator: " ")[1])
    }

    func writeAuthorizedKeys(options: String) throws {
        let publicKey = try String(contentsOfFile: userKey + ".pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        directory.write("authorized_keys", (options.isEmpty ? "" : options + " ") + publicKey + "\n")
    }

    /// Starts sshd and waits until it accepts connections.
    func start() throws {
        let sshd = FileManager.default.isExecutableFile(atPath: "/usr/sbin/sshd") ? "/usr/sbin/sshd" : "/usr/bin/sshd"
        let listening = log.components(separatedBy: "Server listening on").count - 1
        let command = commandPrefix + [sshd, "-D", "-f", directory.file("sshd_config"), "-E", logFile]
        process = try ChildProcess(command[0], Array(command.dropFirst()))
        let up = waitUntil(timeout: 10) {
            if !commandPrefix.isEmpty || listenAddress != "127.0.0.1" { return log.components(separatedBy: "Server listening on").count - 1 > listening }
            guard let fd = try? TCP.connect(port: port, timeout: 1) else { return false }
            close(fd)
            return true
        }
        guard up else { throw TCP.Failure(description: "sshd did not start; its log: \(log)") }
    }

    /// Stops the listener and every session process it forked.
    func stop() {
        signalAll(SIGKILL)
        _ = process?.wait(timeout: 5)
        process = nil
    }

    /// Kills the session processes only (the connections die; the listener stays).
    func killSessions() {
        for pid in sessionProcesses() { kill(pid, SIGKILL) }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the session processes.
    func signalSessions(_ signal: Int32) {
        for pid in sessionProcesses() { kill(pid, signal) }
    }

    /// A new host key; known_hosts is rewritten only if `updateKnownHosts`.
    func changeHostKey(updateKnownHosts: Bool) throws {
        let saved = try String(contentsOfFile: knownHosts, encoding: .utf8)
        stop()
        try generateHostKey()
        if !updateKnownHosts { directory.write("known_hosts", saved) }
        try start()
    }

    private func signalAll(_ signal: Int32) {
        guard let process, process.isRunning else { return }
        let sessions = sessionProcesses()
        process.signal(signal)
        for pid in sessions { kill(pid, signal) }
    }

    /// Every descendant of the sshd listener (its per-connection processes and theirs).
    func sessionProcesses() -> [Int32] {
        guard let root = process?.pid else { return [] }
        var parents: [Int32: Int32] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, let parent = Int32(fields[1]) { parents[pid] = parent }
        }
        var result: [Int32] = []
        var frontier = [root]
        while let next = frontier.popLast() {
            for (pid, parent) in parents where parent == next {
                result.append(pid)
                frontier.append(pid)
            }
        }
        return result
    }

    var log: String {
        (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
    }

    /// How many password attempts sshd refused, for `user` if given, by `method`
    /// (`password`, or `keyboard-interactive/pam`).
    func failedPasswords(for user: String? = nil, method: String = "password") -> Int {
        log.components(separatedBy: "Failed \(method) for " + (user.map { $0 + " " } ?? "")).count - 1
    }

    /// How many SSH logins sshd accepted: the number of SSH sessions made.
    var acceptedLogins: Int {
        log.components(separatedBy: "Accepted publickey").count - 1
    }
}
