import Glibc
import Logging
import TunnelConfig

/// Writes one line per log event to standard error:
/// `2026-11-23T05:30:00.123Z info connection closed service=smtp peer=127.0.0.1:5555 result=ok`.
/// Metadata keys are sorted; a value with spaces, quotes, `=`, `\` or control characters is
/// written in double quotes. Control characters are escaped everywhere, the message included,
/// so one event is always exactly one line.
struct LineLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = Self.timestamp()
        line += " \(event.level.rawValue) \(ControlCharacters.escaped("\(event.message)"))"
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for key in merged.keys.sorted() {
            line += " \(key)=\(Self.quoted("\(merged[key]!)"))"
        }
        line += "\n"
        StandardStreams.write(line, to: 2)
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
