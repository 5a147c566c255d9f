import Glibc
import Logging

/// Writes each log event as a native journal entry with fields (see `JournalEntry`), so that
/// `journalctl -u tunneld TUNNELD_SERVICE=smtp -p warning` finds a service's problems.
///
/// It speaks the documented native protocol over an AF_UNIX datagram socket itself rather
/// than through libsystemd's sd_journal_send: the protocol is a few lines of framing, while
/// libsystemd would add a C module, a build dependency and a runtime library to a daemon that
/// also runs without systemd (containers, other inits, `--stdio` under inetd). An entry the
/// journal does not take (its socket gone, or the entry too large) is written to standard
/// error as a `<N>`-prefixed line instead, which the journal still files by priority.
struct JournalLogHandler: LogHandler {
    /// The journal's socket.
    static let defaultSocketPath = "/run/systemd/journal/socket"

    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    private let socket: JournalSocket
    private var fallback: LineLogHandler

    /// A handler sending to `socket`; `fallbackDescriptor` gets what the journal refuses.
    init(label: String, socket: JournalSocket, fallbackDescriptor: Int32 = 2) {
        self.label = label
        self.socket = socket
        fallback = LineLogHandler(label: label, style: .syslogPriority)
        fallback.descriptor = fallbackDescriptor
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let entry = JournalEntry(level: event.level, message: event.message, metadata: merged, identifier: "tunneld",
                                 file: event.file, function: event.function, line: event.line)
        if !socket.send(entry.encoded) {
            var line = fallback
            line.metadata = metadata
            line.log(event: event)
        }
    }
}

/// The process's one datagram socket to the journal, shared by every handler.
final class JournalSocket: Sendable {
    let path: String
    private let fd: Int32

    /// A socket connected to `path`, or `nil` when nothing listens there.
    init?(path: String = JournalLogHandler.defaultSocketPath) {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard Self.connect(fd, to: path) else {
            close(fd)
            return nil
        }
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends one datagram; reconnects once if the journal was restarted. Returns whether it went.
    func send(_ bytes: [UInt8]) -> Bool {
        for attempt in 0..<2 {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent == bytes.count { return true }
            if sent < 0 && errno == EINTR { continue }
            guard attempt == 0, sent < 0, errno == ECONNREFUSED || errno == ENOTCONN || errno == ENOENT,
                  Self.connect(fd, to: path) else { return false }
        }
        return false
    }

    private static func connect(_ fd: Int32, to path: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }
}
