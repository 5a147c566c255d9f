import Foundation
import Glibc

/// A program started with posix_spawn, its output sent to files, reaped with waitpid.
/// (Foundation's Process can miss a child's exit inside XCTest on Linux; this cannot.)
final class ChildProcess {
    let pid: pid_t
    private var status: Int32?

    /// Starts `path` with `arguments`; standard output and error go to the given files
    /// (appended), or to /dev/null.
    init(_ path: String, _ arguments: [String], environment: [String: String]? = nil, output: String? = nil, error: String? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, error ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { env.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, path, &actions, nil, argv, env)
        guard result == 0 else {
            throw TCP.Failure(description: "cannot start \(path): \(String(cString: strerror(result)))")
        }
        pid = child
    }

    deinit {
        if isRunning {
            kill(pid, SIGKILL)
            _ = wait(timeout: 5)
        }
    }

    var isRunning: Bool {
        guard status == nil else { return false }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid {
            status = raw
            return false
        }
        return true
    }

    /// Waits for the exit; returns the exit code (128+signal if killed), or nil on timeout.
    func wait(timeout: Double) -> Int32? {
        guard waitUntil(timeout: timeout, interval: 0.01, { !isRunning }), let raw = status else { return nil }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    func signal(_ number: Int32) {
        kill(pid, number)
    }
}

/// Runs a program to completion (60 s at most) and returns its status and output.
@discardableResult
func runProgram(_ path: String, _ arguments: [String], environment: [String: String]? = nil, timeout: Double = 60) throws -> (status: Int32, output: String, error: String) {
    let directory = ScratchDirectory("run")
    let output = directory.file("out")
    let error = directory.file("err")
    let child = try ChildProcess(path, arguments, environment: environment, output: output, error: error)
    let status = child.wait(timeout: timeout) ?? -1
    return (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "", (try? String(contentsOfFile: error, encoding: .utf8)) ?? "")
}
