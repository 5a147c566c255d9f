/// xinetd's `log_type`: where a service's log lines go instead of standard error (or the
/// journal): syslog at a facility, or a file of their own.
public enum LogType: Sendable, Hashable, CustomStringConvertible {
    /// `SYSLOG facility [level]`: syslog(3) at `facility`; `level` is the priority of the lines
    /// tunneld logs at info (a connection that ended ok), the others keep their own.
    case syslog(facility: SyslogFacility, level: SyslogLevel)
    /// `FILE path [soft_limit [hard_limit]]`: lines appended to `path`; past `softLimit` bytes
    /// one warning is written, past `hardLimit` nothing more until the file is rotated.
    case file(path: String, softLimit: UInt64?, hardLimit: UInt64?)

    /// Parses the words after `log_type =`, as xinetd reads them.
    static func parse(_ words: [String]) -> Result<LogType, Message> {
        guard let kind = words.first?.uppercased() else {
            return .failure("log_type has no value; write log_type = SYSLOG FACILITY [LEVEL] or log_type = FILE PATH [SOFT_LIMIT [HARD_LIMIT]]")
        }
        switch kind {
        case "SYSLOG":
            guard words.count == 2 || words.count == 3 else {
                return .failure("log_type SYSLOG takes a facility and an optional level, e.g. log_type = SYSLOG daemon info")
            }
            guard let facility = SyslogFacility(name: words[1]) else {
                return .failure("log_type SYSLOG facility '\(words[1])' is not one of \(SyslogFacility.names.joined(separator: ", "))")
            }
            var level = SyslogLevel.info
            if words.count == 3 {
                guard let named = SyslogLevel(name: words[2]) else {
                    return .failure("log_type SYSLOG level '\(words[2])' is not one of \(SyslogLevel.allCases.map(\.name).joined(separator: ", "))")
                }
                level = named
            }
            return .success(.syslog(facility: facility, level: level))
        case "FILE":
            guard words.count >= 2 && words.count <= 4 else {
                return .failure("log_type FILE takes a path and up to two size limits, e.g. log_type = FILE /var/log/tunneld-smtp.log 10M")
            }
            let path = words[1]
            guard path.hasPrefix("/") else {
                return .failure("log_type FILE path '\(path)' is not absolute; write the full path, e.g. /var/log/tunneld-smtp.log")
            }
            var soft: UInt64?
            var hard: UInt64?
            if words.count >= 3 {
                guard let limit = size(words[2]) else { return .failure("log_type FILE soft limit '\(words[2])' is not a size such as 500K or 10M") }
                soft = limit
                hard = limit + min(max(limit / 100, 5 * 1024), 20 * 1024)
            }
            if words.count == 4 {
                guard let limit = size(words[3]) else { return .failure("log_type FILE hard limit '\(words[3])' is not a size such as 500K or 10M") }
                guard limit >= soft! else { return .failure("log_type FILE hard limit \(words[3]) is below the soft limit \(words[2]); make it at least as large") }
                hard = limit
            }
            return .success(.file(path: path, softLimit: soft, hardLimit: hard))
        default:
            return .failure("log_type '\(words[0])' is not SYSLOG or FILE")
        }
    }

    /// A size as xinetd writes it: bytes, or a number ending in `K` or `M`.
    static func size(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        switch digits.last {
        case "k", "K": multiplier = 1024
        case "m", "M": multiplier = 1024 * 1024
        default: break
        }
        if multiplier > 1 { digits = digits.dropLast() }
        guard let number = UInt64(digits), number > 0 else { return nil }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : bytes
    }

    public var description: String {
        switch self {
        case .syslog(let facility, let level): return "SYSLOG \(facility.name) \(level.name)"
        case .file(let path, let soft, let hard):
            return (["FILE", path] + [soft, hard].compactMap { $0.map(String.init) }).joined(separator: " ")
        }
    }
}

/// A syslog facility by its syslog(3) name and code.
public struct SyslogFacility: Sendable, Hashable {
    public let name: String
    /// The facility's number (LOG_DAEMON is 3), as the priority `facility * 8 + level` uses it.
    public let code: Int32

    private static let codes: [String: Int32] = [
        "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
        "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
        "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
    ]

    /// The names, in code order.
    static var names: [String] { codes.sorted { $0.value < $1.value }.map(\.key) }

    public init?(name: String) {
        guard let code = Self.codes[name.lowercased()] else { return nil }
        self.name = name.lowercased()
        self.code = code
    }
}

/// A syslog level (severity) by its syslog(3) name.
public enum SyslogLevel: Int32, Sendable, Hashable, CaseIterable {
    case emerg = 0, alert, crit, err, warning, notice, info, debug

    public var name: String { "\(self)" }

    public init?(name: String) {
        guard let level = Self.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = level
    }
}
