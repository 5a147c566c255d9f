import Glibc
import Logging
import TunnelConfig

/// Writes one line per log event to standard error:
/// `2026-11-23T05:30:00.123Z info connection closed service=smtp peer=127.0.0.1:5555 result=ok`.
/// Metadata keys are sorted; a value with spaces, quotes, `=`, `\` or control characters is
/// written in double quotes. Control characters are escaped everywhere, the message included,
/// so one event is always exactly one line.
///
/// When standard error goes to the journal (`JOURNAL_STREAM`), `style` is `.syslogPriority`:
/// the line starts with sd-daemon's `<N>` priority prefix instead of a timestamp, which the
/// journal adds itself: `<4>warning connection closed … result="ssh-failed: …"`.
struct LineLogHandler: LogHandler {
    /// How a line starts.
    enum Style: Sendable {
        /// An ISO 8601 UTC timestamp with milliseconds.
        case timestamped
        /// The syslog priority as `<N>` (sd-daemon(3)), no timestamp.
        case syslogPriority
    }

    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var style: Style
    /// Where lines go (standard error, or a test's descriptor).
    var descriptor: Int32 = 2

    init(label: String, style: Style = .timestamped) {
        self.label = label
        self.style = style
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        StandardStreams.write(line(for: event), to: descriptor)
    }

    /// The line written for `event`, newline included.
    func line(for event: LogEvent) -> String {
        let start: String
        switch style {
        case .timestamped: start = Self.timestamp() + " "
        case .syslogPriority: start = "<\(SyslogPriority(event.level).rawValue)>"
        }
        return start + Self.text(level: event.level, message: event.message, metadata: metadata.merging(event.metadata ?? [:]) { _, new in new }) + "\n"
    }

    /// `level message key=value…`, escaped to one line: the part of a log line after its start.
    static func text(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata) -> String {
        var line = "\(level.rawValue) \(ControlCharacters.escaped("\(message)"))"
        for key in metadata.keys.sorted() {
            line += " \(key)=\(quoted("\(metadata[key]!)"))"
        }
        return line
    }

    /// A metadata value as written: bare when it is plain, else in double quotes with `\\`,
    /// `"` and control characters escaped.
    static func quoted(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.unicodeScalars.contains {
            $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || ControlCharacters.isControl($0)
        }
        guard needsQuotes else { return value }
        return "\"" + ControlCharacters.escaped(value, alsoEscaping: ["\\", "\""]) + "\""
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func padded(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(Int(parts.tm_year) + 1900, 4))-\(padded(Int(parts.tm_mon) + 1, 2))-\(padded(Int(parts.tm_mday), 2))"
            + "T\(padded(Int(parts.tm_hour), 2)):\(padded(Int(parts.tm_min), 2)):\(padded(Int(parts.tm_sec), 2))"
            + ".\(padded(Int(now.tv_nsec / 1_000_000), 3))Z"
    }
}

/// A log level as a syslog priority (syslog(3)'s LOG_EMERG 0 … LOG_DEBUG 7).
enum SyslogPriority: Int32, Sendable {
    case critical = 2, error = 3, warning = 4, notice = 5, info = 6, debug = 7

    init(_ level: Logger.Level) {
        switch level {
        case .trace, .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        case .critical: self = .critical
        }
    }
}
