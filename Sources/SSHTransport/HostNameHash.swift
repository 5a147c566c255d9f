import CLibSSH2

/// The HMAC-SHA1 that OpenSSH uses for hashed known_hosts names (`|1|salt|hash`), from
/// libcrypto. The configuration module takes it as a `HostNameHasher`.
public enum HostNameHash {
    /// HMAC-SHA1 of `name` keyed with `salt`.
    @Sendable public static func hmacSHA1(salt: [UInt8], name: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = salt.withUnsafeBytes { key in
            name.withUnsafeBytes { message in
                HMAC(EVP_sha1(), key.baseAddress, Int32(key.count), message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count, &digest, &length)
            }
        }
        precondition(result != nil && length == 20, "libcrypto's HMAC failed for SHA-1")
        return Array(digest.prefix(20))
    }
}
