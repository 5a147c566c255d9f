import CLibSSH2
import FoundationEssentials

/// A server's host key as it came in the handshake.
public struct HostKey: Sendable, Equatable {
    /// The key's algorithm name as known_hosts writes it (`ssh-ed25519`, `ecdsa-sha2-nistp256`, ...).
    public var algorithm: String
    /// The public key blob.
    public var blob: [UInt8]

    public init(algorithm: String, blob: [UInt8]) {
        self.algorithm = algorithm
        self.blob = blob
    }

    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    public var fingerprint: String {
        var digest = SHA256()
        digest.update(blob)
        let encoded = Data(digest.finalize()).base64EncodedString()
        return "SHA256:" + encoded.filter { $0 != "=" }
    }

    /// The base64 text known_hosts stores for this key.
    public var base64: String { Data(blob).base64EncodedString() }

    static func algorithmName(libssh2Type type: Int32) -> String {
        switch type {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa"
        case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521"
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519"
        default: return "unknown"
        }
    }
}
