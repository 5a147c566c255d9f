import Glibc

/// The syntax of hosts a client names: IPv4 and IPv6 address literals as bytes and back
/// (inet_pton, inet_ntop), and host names.
public enum HostSyntax {
    /// The bytes of an address literal (4 or 16), or nil when `text` is not one.
    public static func bytes(of text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    /// The canonical text of an address: dotted IPv4, IPv6 as inet_ntop writes it.
    public static func text(of bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether the first `length` bits of `a` and `b` agree.
    public static func prefix(_ a: [UInt8], _ b: [UInt8], _ length: Int) -> Bool {
        var bits = length
        for (x, y) in zip(a, b) where bits > 0 {
            let take = min(8, bits)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - take))
            if x & mask != y & mask { return false }
            bits -= take
        }
        return true
    }

    /// Whether `name` is a host name a resolver may be asked for: ASCII letters, digits, `-`,
    /// `_` and dots between labels of 1 to 63 bytes (one final dot allowed); or an address
    /// literal. Spaces, controls and other characters never are.
    public static func isHostName(_ name: String) -> Bool {
        if bytes(of: name) != nil { return true }
        let labels = (name.hasSuffix(".") ? String(name.dropLast()) : name).split(separator: ".", omittingEmptySubsequences: false)
        guard !labels.isEmpty else { return false }
        return labels.allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63
                && label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }
        }
    }
}
