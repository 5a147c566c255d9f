import Logging

/// One entry in the journal's native protocol (systemd's "Native Journal Protocol"): fields
/// `NAME=value\n`, or, for a value holding a newline, `NAME\n`, its length as a 64-bit
/// little-endian number, the value's bytes, `\n`. A pure value; `JournalLogHandler` sends it.
struct JournalEntry: Equatable, Sendable {
    /// The fields in order; names are valid journal field names.
    private(set) var fields: [(name: String, value: String)] = []

    /// The longest value sent, in bytes; a longer one is cut (a datagram has a size limit).
    static let maxValueBytes = 16 * 1024

    /// The entry for `event`: MESSAGE (the log line after its timestamp), PRIORITY,
    /// SYSLOG_IDENTIFIER, CODE_FILE/LINE/FUNC, and each metadata item as `TUNNELD_<KEY>`
    /// (`service` → `TUNNELD_SERVICE`, `bytes.up` → `TUNNELD_BYTES_UP`), its value unescaped.
    init(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata, identifier: String,
         file: String, function: String, line: UInt) {
        append("MESSAGE", LineLogHandler.text(level: level, message: message, metadata: metadata))
        append("PRIORITY", String(SyslogPriority(level).rawValue))
        append("SYSLOG_IDENTIFIER", identifier)
        append("CODE_FILE", file)
        append("CODE_LINE", String(line))
        append("CODE_FUNC", function)
        for key in metadata.keys.sorted() {
            append(Self.fieldName(forMetadataKey: key), "\(metadata[key]!)")
        }
    }

    /// An entry of the given fields, for tests.
    init(_ fields: [(String, String)]) {
        for (name, value) in fields { append(name, value) }
    }

    static func == (left: JournalEntry, right: JournalEntry) -> Bool {
        left.fields.elementsEqual(right.fields) { $0.name == $1.name && $0.value == $1.value }
    }

    /// `TUNNELD_` and the key upper-cased, every character but A–Z and 0–9 as `_`, at most 64
    /// characters: a name journalctl matches (`TUNNELD_SERVICE=smtp`).
    static func fieldName(forMetadataKey key: String) -> String {
        let body = key.unicodeScalars.map { scalar -> Character in
            let upper = Character(scalar).uppercased()
            return upper.count == 1 && (("A"..."Z").contains(upper) || ("0"..."9").contains(upper)) ? Character(upper) : "_"
        }
        return String(("TUNNELD_" + String(body)).prefix(64))
    }

    private mutating func append(_ name: String, _ value: String) {
        var bytes = Array(value.utf8)
        if bytes.count > Self.maxValueBytes { bytes = Array(bytes.prefix(Self.maxValueBytes)) }
        fields.append((name, String(decoding: bytes, as: UTF8.self)))
    }

    /// The datagram's bytes.
    var encoded: [UInt8] {
        var bytes: [UInt8] = []
        for field in fields {
            let value = Array(field.value.utf8)
            bytes += Array(field.name.utf8)
            if value.contains(UInt8(ascii: "\n")) {
                bytes.append(UInt8(ascii: "\n"))
                var length = UInt64(value.count).littleEndian
                withUnsafeBytes(of: &length) { bytes += $0 }
            } else {
                bytes.append(UInt8(ascii: "="))
            }
            bytes += value
            bytes.append(UInt8(ascii: "\n"))
        }
        return bytes
    }
}
