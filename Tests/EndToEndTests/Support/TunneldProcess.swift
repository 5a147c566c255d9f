import Foundation
import Glibc
import XCTest

/// The tunneld binary run as a separate process on a configuration directory, its log
/// lines (stderr) captured to a file.
final class TunneldProcess {
    let directory: ScratchDirectory
    let configPath: String
    let logFile: String
    private var process: ChildProcess!

    /// The binary next to the test bundle (`swift build` puts it there), or `$TUNNELD_BIN`.
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["TUNNELD_BIN"] { return path }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = (executable as NSString).deletingLastPathComponent
        // The test bundle may be a directory (…/tunneldPackageTests.xctest/…) on some toolchains.
        while !directory.isEmpty && directory != "/" {
            let candidate = directory + "/tunneld"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = (directory as NSString).deletingLastPathComponent
        }
        return "tunneld"
    }

    /// Writes `stanzas` as files of a services.d directory (name → text) and starts tunneld
    /// on it; returns once it logs that it has started.
    /// - `wrapper`: a program and arguments that run tunneld (e.g. `prlimit --nofile=48`).
    /// - `binary`: the tunneld to run, e.g. one `make install` put in place.
    /// - `journalStream`: set `JOURNAL_STREAM` to the log file's device and inode, as systemd
    ///   does when a service's standard error goes to the journal.
    init(stanzas: [String: String], arguments: [String] = [], environment: [String: String] = [:], wrapper: [String] = [], waitForStart: Bool = true, binary: String = TunneldProcess.binary, journalStream: Bool = false) throws {
        directory = ScratchDirectory("tunneld")
        configPath = directory.file("services.d")
        try FileManager.default.createDirectory(atPath: configPath, withIntermediateDirectories: true)
        for (name, text) in stanzas { directory.write("services.d/\(name)", text) }
        if !stanzas.values.contains(where: { $0.contains("control_socket") }) {
            // Each test's daemon gets its own control socket, not the shared default under /run.
            directory.write("services.d/00-control", "defaults { control_socket = \(directory.file("control.sock")) }\n")
        }
        logFile = directory.file("tunneld.log")
        FileManager.default.createFile(atPath: logFile, contents: nil)

        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TCP.Failure(description: "no tunneld binary at \(binary); run swift build first or set TUNNELD_BIN")
        }
        var env = ProcessInfo.processInfo.environment
        env["HOME"] = directory.path
        env["SSH_AUTH_SOCK"] = nil
        for (key, value) in environment { env[key] = value }
        if journalStream {
            var status = stat()
            stat(logFile, &status)
            env["JOURNAL_STREAM"] = "\(status.st_dev):\(status.st_ino)"
        }
        let command = wrapper + [binary, "-f", configPath] + arguments
        process = try ChildProcess(command[0], Array(command.dropFirst()), environment: env, output: directory.file("stdout"), error: logFile)
        if waitForStart {
            guard waitForLog("notice started", timeout: 10) else {
                throw TCP.Failure(description: "tunneld did not start; its log:\n\(log)")
            }
        }
    }

    var pid: Int32 { process.pid }

    /// The control socket the daemon was given (unless a stanza named its own).
    var controlSocket: String { directory.file("control.sock") }

    var log: String {
        (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
    }

    var logLines: [String] {
        log.split(separator: "\n").map(String.init)
    }

    /// Lines with `connection closed` that contain `text`.
    func connectionLines(containing text: String) -> [String] {
        logLines.filter { $0.contains("connection closed") && $0.contains(text) }
    }

    @discardableResult
    func waitForLog(_ text: String, count: Int = 1, timeout: Double) -> Bool {
        waitUntil(timeout: timeout) { log.components(separatedBy: text).count - 1 >= count }
    }

    func signal(_ number: Int32) {
        process.signal(number)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status, or nil if it did not exit in time.
    func terminate(timeout: Double = 15) -> Int32? {
        signal(SIGTERM)
        return process.wait(timeout: timeout)
    }

    var isRunning: Bool { process.isRunning }

    var residentKiB: Int { processResidentKiB(of: pid) ?? -1 }
}

/// A SOCKS5 service through `sshd`, with the test's own keys.
func socksStanza(_ name: String, port: UInt16, via sshd: SSHServer, extra: String = "") -> String {
    """
    service \(name)
    {
        type            = SOCKS
        port            = \(port)
        server          = \(sshd.user)@127.0.0.1:\(sshd.port)
        identity        = \(sshd.userKey)
        identity_agent  = none
        known_hosts     = \(sshd.knownHosts)
    \(extra)
    }

    """
}

/// A stanza for a service through `sshd` to `target`, with the test's own keys.
func stanza(_ name: String, port: UInt16, via sshd: SSHServer, target: UInt16, extra: String = "") -> String {
    """
    service \(name)
    {
        port            = \(port)
        server          = \(sshd.user)@\(sshd.listenAddress):\(sshd.port)
        server_args     = 127.0.0.1 \(target)
        identity        = \(sshd.userKey)
        identity_agent  = none
        known_hosts     = \(sshd.knownHosts)
        connect_timeout = 5
    \(extra)
    }

    """
}
