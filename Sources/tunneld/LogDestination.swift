import Glibc
import Logging

/// Where tunneld's log goes, chosen once at start: standard error as plain lines (the
/// default), or, when standard error is the journal's stream, native journal entries (or
/// `<N>`-prefixed lines where the journal's socket is missing).
enum LogDestination: Sendable {
    /// Lines on standard error, in the given style.
    case standardError(LineLogHandler.Style)
    /// Native journal entries through the socket.
    case journal(JournalSocket)

    /// The destination for standard error: the journal when `JOURNAL_STREAM` names it
    /// (systemd sets it for a service whose output goes to the journal), plain lines otherwise.
    static func forStandardError(environment: [String: String], journalSocketPath: String = JournalLogHandler.defaultSocketPath) -> LogDestination {
        guard isJournalStream(environment["JOURNAL_STREAM"], descriptor: 2) else { return .standardError(.timestamped) }
        if let socket = JournalSocket(path: journalSocketPath) { return .journal(socket) }
        return .standardError(.syslogPriority)
    }

    /// Whether `value` (`JOURNAL_STREAM`'s `DEVICE:INODE`, decimal) names the file open as
    /// `descriptor`: systemd's documented test that output still goes to the journal, and was
    /// not redirected by whoever started tunneld from a unit.
    static func isJournalStream(_ value: String?, descriptor: Int32) -> Bool {
        guard let parts = value?.split(separator: ":"), parts.count == 2,
              let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// A handler that writes here.
    func handler(label: String) -> any LogHandler {
        switch self {
        case .standardError(let style): return LineLogHandler(label: label, style: style)
        case .journal(let socket): return JournalLogHandler(label: label, socket: socket)
        }
    }
}
