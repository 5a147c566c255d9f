import Foundation

/// Interim known_hosts reader (plain entries only); replaced by the full reader.
public struct KnownHosts: Sendable {
    public var entries: [(patterns: [String], key: KnownHostKey)]

    public static func load(paths: [String]) -> KnownHosts {
        var entries: [(patterns: [String], key: KnownHostKey)] = []
        for path in paths {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
            for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                var fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
                guard !fields.isEmpty, !fields[0].hasPrefix("#") else { continue }
                var revoked = false
                if fields[0] == "@revoked" { revoked = true; fields.removeFirst() }
                guard fields.count >= 3, let blob = Data(base64Encoded: fields[2]) else { continue }
                let key = KnownHostKey(keyType: fields[1], key: [UInt8](blob), isRevoked: revoked, location: SourceLocation(file: path, line: index + 1))
                entries.append((fields[0].split(separator: ",").map(String.init), key))
            }
        }
        return KnownHosts(entries: entries)
    }

    public func keys(forHost host: String, port: UInt16) -> [KnownHostKey] {
        let name = port == 22 ? host : "[\(host)]:\(port)"
        return entries.filter { $0.patterns.contains(name) }.map(\.key)
    }

    public static func entryLine(host: String, port: UInt16, keyType: String, key: [UInt8]) -> String {
        let name = port == 22 ? host : "[\(host)]:\(port)"
        return "\(name) \(keyType) \(Data(key).base64EncodedString())"
    }
}

public struct KnownHostKey: Sendable {
    public var keyType: String
    public var key: [UInt8]
    public var isRevoked: Bool
    public var location: SourceLocation
}
