import FoundationEssentials

/// Port numbers by name, read from an /etc/services-style file (TCP entries and aliases).
struct ServiceNames {
    private var ports: [String: UInt16] = [:]

    /// Reads `path`; a missing file gives an empty table.
    init(path: String) {
        guard let data = FileManager.default.contents(atPath: path), data.count < 4 << 20 else { return }
        for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let text = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { continue }
            let portAndProtocol = fields[1].split(separator: "/")
            guard portAndProtocol.count == 2, portAndProtocol[1] == "tcp", let port = UInt16(portAndProtocol[0]), port > 0 else { continue }
            for name in [fields[0]] + fields.dropFirst(2) where ports[String(name)] == nil {
                ports[String(name)] = port
            }
        }
    }

    func port(named name: String) -> UInt16? { ports[name] }
}

/// Parsing of the value types attributes share. Each returns the value or a message saying
/// what was expected.
enum ValueParser {
    /// A port: 1–65535, or a name from the services file.
    static func port(_ text: String, names: ServiceNames) -> Result<UInt16, Message> {
        if let number = Int(text) {
            guard (1...65535).contains(number) else { return .failure("port \(text) is out of range; use 1–65535") }
            return .success(UInt16(number))
        }
        if let port = names.port(named: text) { return .success(port) }
        return .failure("unknown port '\(text)'; use a number or a TCP service name from /etc/services")
    }

    /// The most a duration attribute may be, in seconds and as a sentence says it.
    struct Limit {
        var seconds: Double
        var words: String
        var written: String

        static let tenMinutes = Limit(seconds: 600, words: "10 minutes", written: "10m")
        static let hour = Limit(seconds: 3600, words: "1 hour", written: "1h")
        static let day = Limit(seconds: 86_400, words: "1 day", written: "24h")
        static let year = Limit(seconds: 86_400 * 365, words: "a year", written: "8760h")
    }

    /// A duration in seconds, `30`, `0.5`, `30s`, `5m`, `1h`, of at most `limit`.
    static func seconds(_ text: String, allowZero: Bool = true, atMost limit: Limit = .year) -> Result<Double, Message> {
        let result = anySeconds(text, allowZero: allowZero)
        if case .success(let value) = result, value > limit.seconds {
            return .failure("'\(text)' is more than \(limit.words); use at most \(limit.written)")
        }
        return result
    }

    private static func anySeconds(_ text: String, allowZero: Bool) -> Result<Double, Message> {
        var number = text.lowercased()
        var scale = 1.0
        if let last = number.last, "smh".contains(last) {
            scale = last == "s" ? 1 : last == "m" ? 60 : 3600
            number.removeLast()
        }
        guard let value = Double(number), value.isFinite, value >= 0, value * scale <= 86_400 * 365 else {
            return .failure("'\(text)' is not a duration; use seconds like 30, 0.5, or 5m")
        }
        guard allowZero || value > 0 else { return .failure("'\(text)' must be more than 0") }
        return .success(value * scale)
    }

    /// A count, or `UNLIMITED` (nil).
    static func limit(_ text: String) -> Result<Int?, Message> {
        if text.uppercased() == "UNLIMITED" { return .success(nil) }
        guard let value = Int(text), value > 0, value <= 1_000_000 else {
            return .failure("'\(text)' is not a positive number or UNLIMITED")
        }
        return .success(value)
    }

    /// How many sessions a server may have at once: 1 to 64.
    static func sessionCount(_ text: String) -> Result<Int, Message> {
        guard let value = Int(text), (1...64).contains(value) else {
            return .failure("'\(text)' is not a session count; use 1 to 64")
        }
        return .success(value)
    }

    /// `yes` or `no` (also `true`/`false`, `on`/`off`, `1`/`0`).
    static func flag(_ text: String) -> Result<Bool, Message> {
        switch text.lowercased() {
        case "yes", "true", "on", "1": return .success(true)
        case "no", "false", "off", "0": return .success(false)
        default: return .failure("'\(text)' is not yes or no")
        }
    }

    /// A numeric IPv4 address as 4 bytes.
    static func ipv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let value = UInt8(part) else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    /// A numeric IPv6 address as 16 bytes (with `::` and an IPv4 tail).
    static func ipv6(_ text: String) -> [UInt8]? {
        guard text.contains(":"), text.count <= 45, text.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains("."), let v4 = ipv4(String(piece)) {
                    result.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    result.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                } else {
                    guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
                    result.append(value)
                }
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count < 8 else { return nil }
            all += [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }

    /// A host name as DNS allows it (letters, digits, `-`, `.`, `_`).
    static func isHostName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253, !text.hasPrefix("-"), !text.hasPrefix(".") else { return false }
        return text.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" || $0 == "." || $0 == "_" }
    }

    /// A host: a name, an IPv4 address, or an IPv6 address (brackets allowed).
    static func host(_ text: String) -> String? {
        var host = text
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if ipv6(host) != nil || ipv4(host) != nil || isHostName(host) { return host }
        return nil
    }

    /// An `only_from` / `no_access` entry: address, CIDR block, or host name.
    static func addressMatch(_ text: String) -> Result<AddressMatch, Message> {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let address = parts[0]
        guard let bytes = ipv4(address) ?? ipv6(address) else {
            if parts.count == 1, isHostName(address) { return .success(.hostname(address.lowercased())) }
            if parts.count == 1, address.hasPrefix("."), isHostName(String(address.dropFirst())) {
                return .failure("'\(text)' is xinetd's domain form, which needs a reverse DNS lookup of every client; tunneld does not do that: list the clients' addresses, CIDR blocks or host names")
            }
            return .failure("'\(text)' is not an address, a CIDR block or a host name")
        }
        let bits = bytes.count * 8
        var prefix = bits
        if parts.count == 1 && bytes.count == 4 {
            // xinetd reads trailing zero octets as a network: 10.1.0.0 is 10.1.0.0/16, 0.0.0.0 everyone.
            var octets = 4
            while octets > 0 && bytes[octets - 1] == 0 { octets -= 1 }
            prefix = octets * 8
        }
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...bits).contains(value) else {
                return .failure("'\(text)' has a bad prefix length; use 0–\(bits)")
            }
            prefix = value
        }
        // An IPv4-mapped block (::ffff:a.b.c.d) is the IPv4 block: clients come as IPv4.
        if bytes.count == 16, prefix >= 96, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            return .success(.network(address: Array(bytes[12..<16]), prefixLength: prefix - 96))
        }
        return .success(.network(address: bytes, prefixLength: prefix))
    }

    /// `SHA256:` followed by 43 base64 characters, as `ssh-keygen -lf` prints.
    static func fingerprint(_ text: String) -> Result<String, Message> {
        guard text.hasPrefix("SHA256:") else {
            return .failure("fingerprint '\(text)' is not SHA256:…; print it with ssh-keygen -lf KEYFILE")
        }
        var body = String(text.dropFirst(7))
        while body.hasSuffix("=") { body.removeLast() }
        guard body.count == 43, body.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "/") }) else {
            return .failure("fingerprint '\(text)' is not a SHA256 fingerprint (43 base64 characters after SHA256:)")
        }
        return .success("SHA256:" + body)
    }
}

/// A sentence saying what is wrong with a value and what to write instead.
struct Message: Error, Equatable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation, CustomStringConvertible {
    var text: String
    init(stringLiteral value: String) { text = value }
    init(_ text: String) { self.text = text }
    var description: String { text }
}
