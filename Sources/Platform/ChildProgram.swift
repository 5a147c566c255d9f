import Glibc

/// Runs a program to its end: posix_spawn(3), stdin from /dev/null, stdout and stderr
/// collected through pipes while it runs (so a large output cannot stall it), bounded in time.
public enum ChildProgram {
    /// How a program that ran ended, and what it wrote.
    public struct Exit {
        /// The exit status, or 128 + the signal that killed it.
        public var status: Int32
        public var output: [UInt8]
        public var errors: [UInt8]
    }

    public enum Failure: Error {
        /// posix_spawn failed; the text is strerror's.
        case cannotStart(String)
        /// The program ran longer than allowed and was killed.
        case timedOut
    }

    /// Runs `path` with `arguments` and exactly `environment`, in its own process group,
    /// with default signal handling (the descriptors tunneld opens are close-on-exec). Kills
    /// it (SIGKILL) when it runs over `timeout` seconds. Once it has exited, its output is
    /// read for at most one more second (a child it left behind may hold the pipes open).
    public static func run(_ path: String, _ arguments: [String], environment: [String: String], timeout: Double) -> Result<Exit, Failure> {
        var output: [Int32] = [-1, -1]
        var errors: [Int32] = [-1, -1]
        guard makePipe(&output) else { return .failure(.cannotStart(String(cString: strerror(errno)))) }
        guard makePipe(&errors) else {
            let reason = String(cString: strerror(errno))
            close(output[0]); close(output[1])
            return .failure(.cannotStart(reason))
        }
        defer { close(output[0]); close(errors[0]) }

        var pid: pid_t = 0
        let spawned = spawn(path, arguments, environment: environment, output: output[1], errors: errors[1], pid: &pid)
        close(output[1])
        close(errors[1])
        guard spawned == 0 else { return .failure(.cannotStart(String(cString: strerror(spawned)))) }

        let deadline = Deadline(seconds: timeout)
        var collected: [[UInt8]] = [[], []]
        var open = [output[0], errors[0]]
        var status: Int32?
        var readingEnds: Deadline?
        while !open.allSatisfy({ $0 < 0 }) {
            if status == nil { status = reap(pid, blocking: false) }
            if status != nil && readingEnds == nil { readingEnds = Deadline(seconds: 1) }
            if let readingEnds, readingEnds.hasPassed { break }
            if deadline.hasPassed && status == nil { break }
            var polled = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&polled, nfds_t(polled.count), 100)
            guard ready > 0 else { continue }
            for index in polled.indices where polled[index].revents != 0 {
                if !drain(open[index], into: &collected[index]) { open[index] = -1 }
            }
        }
        while status == nil && !deadline.hasPassed {
            status = reap(pid, blocking: false)
            if status == nil { usleep(10_000) }
        }
        guard let status else {
            kill(pid, SIGKILL)
            _ = reap(pid, blocking: true)
            return .failure(.timedOut)
        }
        return .success(Exit(status: status, output: collected[0], errors: collected[1]))
    }

    /// posix_spawn with /dev/null, `output` and `errors` as 0-2; returns its error number.
    private static func spawn(_ path: String, _ arguments: [String], environment: [String: String], output: Int32, errors: Int32, pid: inout pid_t) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, errors, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        return posix_spawn(&pid, path, &actions, &attributes, argv, envp)
    }

    /// A pipe whose two ends are close-on-exec; false (errno set) if there is none.
    private static func makePipe(_ ends: inout [Int32]) -> Bool {
        guard pipe(&ends) == 0 else { return false }
        for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    /// Appends what `fd` has now to `bytes`; false at end of file or on an error.
    private static func drain(_ fd: Int32, into bytes: inout [UInt8]) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { return errno == EINTR || errno == EAGAIN }
        bytes += buffer[0..<count]
        return count > 0
    }

    /// The exit status of `pid` once it has ended (128 + signal if killed), nil while it runs.
    private static func reap(_ pid: pid_t, blocking: Bool) -> Int32? {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
            if result < 0 && errno == EINTR { continue }
            guard result == pid else { return nil }
            let signal = status & 0x7f
            return signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }
    }

    /// A point in time on the monotonic clock.
    private struct Deadline {
        let instant: ContinuousClock.Instant

        init(seconds: Double) {
            instant = .now + .milliseconds(Int64(seconds * 1000))
        }

        var hasPassed: Bool { ContinuousClock.now >= instant }
    }
}
