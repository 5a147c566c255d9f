import CLibSSH2

/// SHA-256 from libcrypto (OpenSSL), for host key fingerprints. It hashes key blobs, so it
/// keeps the bytes until `finalize` and digests them in one call.
struct SHA256 {
    private var pending: [UInt8] = []

    mutating func update(_ bytes: [UInt8]) {
        pending += bytes
    }

    /// The 32-byte digest of everything passed to `update`.
    func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let status = pending.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &digest, &length, EVP_sha256(), nil) }
        precondition(status == 1 && length == 32, "libcrypto's EVP_Digest failed for SHA-256")
        return Array(digest.prefix(32))
    }
}
