import FoundationEssentials

/// The host keys OpenSSH known_hosts files hold, looked up the way ssh does: the name is
/// `host` for port 22 and `[host]:port` otherwise; patterns may be hashed (`|1|salt|hash`),
/// use `*` and `?`, or be negated with `!`. `@revoked` keys are kept (marked), and a revoked
/// key is refused wherever its line is; `@cert-authority` lines are skipped (tunneld does not
/// use host certificates). Lines may end in "\r\n".
public struct KnownHosts: Sendable {
    struct Entry: Sendable {
        var patterns: [String]
        var key: KnownHostKey
    }

    var entries: [Entry] = []
    /// Matches hashed names; without it, hashed lines match nothing.
    var hasher: HostNameHasher?

    init(entries: [Entry] = [], hasher: HostNameHasher? = nil) {
        self.entries = entries
        self.hasher = hasher
    }

    /// Reads the files in order; missing or unreadable files add nothing.
    public static func load(paths: [String], hasher: HostNameHasher?) -> KnownHosts {
        var hosts = KnownHosts(hasher: hasher)
        for path in paths {
            guard let bytes = FilePrefix.read(path, atMost: 16 << 20) else { continue }
            hosts.entries += parse(bytes, file: path)
        }
        return hosts
    }

    static func parse(_ text: String, file: String) -> [Entry] {
        parse(Array(text.utf8), file: file)
    }

    /// Reads lines as bytes: Swift takes "\r\n" for one Character, so a CRLF file would not
    /// split on "\n" Characters. A trailing "\r" is dropped from each line.
    static func parse(_ bytes: [UInt8], file: String) -> [Entry] {
        var entries: [Entry] = []
        for (index, raw) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let line = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw
            var fields = line.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }).map { String(decoding: $0, as: UTF8.self) }
            guard let first = fields.first, !first.hasPrefix("#") else { continue }
            var isRevoked = false
            if first.hasPrefix("@") {
                guard first == "@revoked" else { continue }
                isRevoked = true
                fields.removeFirst()
            }
            guard fields.count >= 3, let blob = Data(base64Encoded: fields[2]) else { continue }
            let key = KnownHostKey(
                keyType: fields[1], key: [UInt8](blob), isRevoked: isRevoked,
                location: SourceLocation(file: file, line: index + 1))
            entries.append(Entry(patterns: fields[0].split(separator: ",").map(String.init), key: key))
        }
        return entries
    }

    /// OpenSSH's preference among host key types: the server is asked for the known types in
    /// this order, not in file order, so that a wrong key of a preferred type that the server
    /// offers is seen (HOST KEY CHANGED) even when a right key of another type is listed first.
    static let typePreference = [
        "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
    ]

    /// The keys recorded for `host` at `port`: by OpenSSH's preference of their type, then
    /// in file order.
    public func keys(forHost host: String, port: UInt16) -> [KnownHostKey] {
        let name = Self.lookupName(host: host, port: port)
        let keys = entries.filter { Self.matches(name, patterns: $0.patterns, hasher: hasher) }.map(\.key)
        func rank(_ key: KnownHostKey) -> Int { Self.typePreference.firstIndex(of: key.keyType) ?? Self.typePreference.count }
        return keys.enumerated().sorted { rank($0.element) == rank($1.element) ? $0.offset < $1.offset : rank($0.element) < rank($1.element) }.map(\.element)
    }

    /// What known_hosts says about the key a server showed.
    public enum Verdict: Equatable, Sendable {
        /// A line holds this key for the host.
        case known(SourceLocation)
        /// A `@revoked` line holds this key: refuse it, whatever other lines say.
        case revoked(SourceLocation)
        /// The host has other keys (the first at this place), not this one.
        case changed(SourceLocation)
        /// No line names the host.
        case unknown
    }

    /// Judges `key` against `known`, the host's keys from `keys(forHost:port:)`.
    public static func verdict(keyType: String, key: [UInt8], known: [KnownHostKey]) -> Verdict {
        let matches = known.filter { $0.keyType == keyType && $0.key == key }
        if let revoked = matches.first(where: \.isRevoked) { return .revoked(revoked.location) }
        if let match = matches.first { return .known(match.location) }
        if let sameType = known.first(where: { !$0.isRevoked && $0.keyType == keyType }) { return .changed(sameType.location) }
        if let previous = known.first(where: { !$0.isRevoked }) { return .changed(previous.location) }
        return .unknown
    }

    /// The line to append for a key, as `ssh-keyscan` would print it.
    public static func entryLine(host: String, port: UInt16, keyType: String, key: [UInt8]) -> String {
        "\(lookupName(host: host, port: port)) \(keyType) \(Data(key).base64EncodedString())"
    }

    static func lookupName(host: String, port: UInt16) -> String {
        port == 22 ? host.lowercased() : "[\(host.lowercased())]:\(port)"
    }

    /// ssh's rule: some pattern matches and no negated pattern does.
    static func matches(_ name: String, patterns: [String], hasher: HostNameHasher? = nil) -> Bool {
        var matched = false
        for pattern in patterns {
            if pattern.hasPrefix("!") {
                if matchesOne(name, String(pattern.dropFirst()), hasher: hasher) { return false }
            } else if matchesOne(name, pattern, hasher: hasher) {
                matched = true
            }
        }
        return matched
    }

    private static func matchesOne(_ name: String, _ pattern: String, hasher: HostNameHasher?) -> Bool {
        if pattern.hasPrefix("|1|") {
            let parts = pattern.split(separator: "|")
            guard parts.count == 3, let salt = Data(base64Encoded: String(parts[1])), let hash = Data(base64Encoded: String(parts[2])) else { return false }
            guard let hasher else { return false }
            return hasher([UInt8](salt), Array(name.utf8)) == [UInt8](hash)
        }
        return wildcard(Array(name), Array(pattern.lowercased()))
    }

    private static func wildcard(_ name: [Character], _ pattern: [Character]) -> Bool {
        var n = 0, p = 0, star = -1, mark = 0
        while n < name.count {
            if p < pattern.count && (pattern[p] == "?" || pattern[p] == name[n]) {
                n += 1; p += 1
            } else if p < pattern.count && pattern[p] == "*" {
                star = p; mark = n; p += 1
            } else if star >= 0 {
                p = star + 1; mark += 1; n = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}

/// One key of a known_hosts file.
public struct KnownHostKey: Sendable, Equatable {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, ...
    public var keyType: String
    /// The decoded public key blob.
    public var key: [UInt8]
    /// Marked `@revoked`: this key must be refused.
    public var isRevoked: Bool
    /// Where the line is.
    public var location: SourceLocation

    public init(keyType: String, key: [UInt8], isRevoked: Bool, location: SourceLocation) {
        self.keyType = keyType
        self.key = key
        self.isRevoked = isRevoked
        self.location = location
    }
}

/// HMAC-SHA1 of a host name (second argument) keyed with a salt (first), as hashed
/// known_hosts lines need. The configuration module has no cryptography of its own: the
/// command passes libcrypto's (SSHTransport's `HostNameHash.hmacSHA1`).
public typealias HostNameHasher = @Sendable (_ salt: [UInt8], _ name: [UInt8]) -> [UInt8]
