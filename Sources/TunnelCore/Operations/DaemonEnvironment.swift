import SSHTransport
import TunnelConfig

extension ConfigurationLoader.Environment {
    /// The environment of the account this process runs as, with libcrypto's HMAC-SHA1 for
    /// hashed known_hosts names: what the command reads its configuration with.
    public static var daemon: Self {
        var environment = current
        environment.hostNameHasher = HostNameHash.hmacSHA1
        return environment
    }
}
