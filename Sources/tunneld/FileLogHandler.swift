import Glibc
import Logging
import Platform
import TunnelConfig

/// Appends each log event as a line (the standard-error format) to a file of its own
/// (`log_type = FILE path [soft_limit [hard_limit]]`).
struct FileLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let file: LogFile

    init(label: String, file: LogFile) {
        self.label = label
        self.file = file
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = LineLogHandler(label: label)
        line.metadata = metadata
        file.append(line.line(for: event))
    }
}

/// One log file, shared by the services that name it: appended to, reopened at its path on
/// SIGHUP (after logrotate moved it away), and held to xinetd's limits: past the soft limit
/// one warning is written; past the hard limit one last notice, then nothing until the file is
/// rotated and reopened. Each notice also goes to `report`, for the daemon's own log.
final class LogFile: @unchecked Sendable {
    let path: String
    let softLimit: UInt64?
    let hardLimit: UInt64?
    private let report: @Sendable (String) -> Void
    private let lock = Lock()
    private var fd: Int32
    private var size: UInt64 = 0
    private var isPastSoftLimit = false
    private var isStopped = false

    /// Opens (creating, mode 0640) `path` for appending; throws a sentence naming the file.
    init(path: String, softLimit: UInt64? = nil, hardLimit: UInt64? = nil, report: @escaping @Sendable (String) -> Void) throws {
        self.path = path
        self.softLimit = softLimit
        self.hardLimit = hardLimit
        self.report = report
        fd = -1
        fd = try Self.open(path)
        size = Self.size(of: fd)
    }

    deinit {
        close(fd)
    }

    /// Appends `line` unless the hard limit was reached.
    func append(_ line: String) {
        var notice: String?
        lock.lock()
        defer {
            lock.unlock()
            if let notice { report(notice) }
        }
        guard !isStopped else { return }
        let count = UInt64(line.utf8.count)
        if let hardLimit, size + count > hardLimit {
            isStopped = true
            notice = "log file \(path) reached its hard limit of \(hardLimit) bytes; nothing more is written to it until it is rotated (then send SIGHUP)"
            write("# tunneld: \(notice!)\n")
            return
        }
        write(line)
        if let softLimit, size > softLimit, !isPastSoftLimit {
            isPastSoftLimit = true
            notice = "log file \(path) is past its soft limit of \(softLimit) bytes; rotate it (logrotate, then SIGHUP)"
            write("# tunneld: \(notice!)\n")
        }
    }

    /// Opens the file at `path` again (a new one after rotation) and starts its limits over.
    /// On failure it keeps writing where it did and returns why.
    func reopen() -> String? {
        let fresh: Int32
        do {
            fresh = try Self.open(path)
        } catch {
            return "\(error)"
        }
        lock.lock()
        defer { lock.unlock() }
        close(fd)
        fd = fresh
        size = Self.size(of: fd)
        isPastSoftLimit = false
        isStopped = false
        return nil
    }

    private func write(_ text: String) {
        size += UInt64(DescriptorIO.writeAll(fd, text))
    }

    private static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw LogFileError(description: "cannot open log file \(path): \(String(cString: strerror(errno))); check log_type and the directory's permissions") }
        return fd
    }

    private static func size(of fd: Int32) -> UInt64 {
        var status = stat()
        return fstat(fd, &status) == 0 ? UInt64(status.st_size) : 0
    }
}

/// A log file that cannot be opened, as one sentence.
struct LogFileError: Error, CustomStringConvertible {
    let description: String
}
