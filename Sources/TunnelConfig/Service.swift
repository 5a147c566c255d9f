/// The validated description of one service: what `tunneld` listens on and where it tunnels to.
///
/// Values here are final: defaults are applied, names are resolved to numbers, and the
/// xinetd command form is already translated. The tunnel reads nothing else.
public struct Service: Sendable, Equatable {
    /// The stanza's name (`service NAME {`).
    public var name: String
    /// Where the stanza was written, for messages.
    public var location: SourceLocation
    /// The local address and port to accept clients on.
    public var listen: ListenAddress
    /// More addresses with the same port: `[::1]` when `bind` is `localhost` (or not set).
    public var alsoListen: [ListenAddress]
    /// `type = SOCKS`: each client names its target with SOCKS5; `target` is a placeholder.
    public var isSocks: Bool
    /// The targets a SOCKS service's clients may name; empty means any.
    public var permit: [PermitRule]
    /// The SSH server to log in to.
    public var server: Endpoint
    /// The SSH login name.
    public var user: String
    /// The forward target as the SSH server sees it (`server_args`).
    public var target: Endpoint
    /// Private key files to try, in order, after the agent.
    public var identities: [String]
    /// A file holding the identity's passphrase, if any.
    public var identityPassphraseFile: String?
    /// The ssh-agent socket path; `nil` means no agent.
    public var identityAgent: String?
    /// A file holding the login password, for `password` and `keyboard-interactive` login.
    public var passwordFile: String?
    /// known_hosts files, read in order.
    public var knownHosts: [String]
    /// What to do with an unknown host key.
    public var hostKeyPolicy: HostKeyPolicy
    /// A pinned host key fingerprint (`SHA256:…`), which replaces known_hosts when set.
    public var fingerprint: String?
    /// Seconds an idle session stays up after its last channel closes.
    public var linger: Double
    /// Whether the session is kept up at all times.
    public var isPersistent: Bool
    /// How many SSH sessions to the server may carry this service's connections at once.
    public var sessions: Int
    /// Seconds between health probes of the target (persistent services), if probed.
    public var probeInterval: Double?
    /// SSH-level liveness checking.
    public var keepalive: Keepalive
    /// Seconds allowed for TCP connect, handshake, host-key check and authentication.
    public var connectTimeout: Double
    /// Maximum live connections; `nil` is unlimited.
    public var instances: Int?
    /// Maximum live connections from one client address; `nil` is unlimited.
    public var perSource: Int?
    /// Connection-rate limit; `nil` is none.
    public var cps: ConnectionRate?
    /// Clients allowed (`only_from`): `nil` (no only_from) admits anyone, an empty list nobody.
    public var onlyFrom: [AddressMatch]?
    /// Clients refused (`no_access`).
    public var noAccess: [AddressMatch]
    /// xinetd `log_on_success` fields, upper-cased.
    public var logOnSuccess: Set<String>
    /// xinetd `log_on_failure` fields, upper-cased.
    public var logOnFailure: Set<String>
    /// How `server` was resolved as an ssh_config Host alias (`ssh_config`), for `--check`.
    public var sshConfig: SSHConfigResolution?

    public init(
        name: String, location: SourceLocation, listen: ListenAddress, alsoListen: [ListenAddress] = [],
        isSocks: Bool = false, permit: [PermitRule] = [], server: Endpoint,
        user: String, target: Endpoint, identities: [String] = [],
        identityPassphraseFile: String? = nil, identityAgent: String? = nil, passwordFile: String? = nil,
        knownHosts: [String] = [], hostKeyPolicy: HostKeyPolicy = .strict,
        fingerprint: String? = nil, linger: Double = 30, isPersistent: Bool = false, sessions: Int = 4,
        probeInterval: Double? = nil,
        keepalive: Keepalive = Keepalive(), connectTimeout: Double = 10,
        instances: Int? = nil, perSource: Int? = nil, cps: ConnectionRate? = nil,
        onlyFrom: [AddressMatch]? = nil, noAccess: [AddressMatch] = [],
        logOnSuccess: Set<String> = [], logOnFailure: Set<String> = [], sshConfig: SSHConfigResolution? = nil
    ) {
        self.name = name
        self.location = location
        self.listen = listen
        self.alsoListen = alsoListen
        self.isSocks = isSocks
        self.permit = permit
        self.server = server
        self.user = user
        self.target = target
        self.identities = identities
        self.identityPassphraseFile = identityPassphraseFile
        self.identityAgent = identityAgent
        self.passwordFile = passwordFile
        self.knownHosts = knownHosts
        self.hostKeyPolicy = hostKeyPolicy
        self.fingerprint = fingerprint
        self.linger = linger
        self.isPersistent = isPersistent
        self.sessions = sessions
        self.probeInterval = probeInterval
        self.keepalive = keepalive
        self.connectTimeout = connectTimeout
        self.instances = instances
        self.perSource = perSource
        self.cps = cps
        self.onlyFrom = onlyFrom
        self.noAccess = noAccess
        self.logOnSuccess = logOnSuccess
        self.logOnFailure = logOnFailure
        self.sshConfig = sshConfig
    }

    /// The `target` of a SOCKS service, which has none of its own.
    public static let socksTarget = Endpoint(host: "socks", port: 0)

    /// Every address the service listens on, `listen` first.
    public var listenAddresses: [ListenAddress] { [listen] + alsoListen }

    /// The services that may share one SSH session: same server, login, keys and host-key rules.
    public var sessionKey: SessionKey {
        SessionKey(
            server: server, user: user, identities: identities,
            identityPassphraseFile: identityPassphraseFile, identityAgent: identityAgent, passwordFile: passwordFile,
            knownHosts: knownHosts, hostKeyPolicy: hostKeyPolicy, fingerprint: fingerprint)
    }
}

/// A Host alias resolved by OpenSSH (`ssh -G`), and where each setting of the service came from.
public struct SSHConfigResolution: Sendable, Hashable {
    /// One resolved setting: its tunneld name, its value, and `ssh_config`, `stanza` or `default`.
    public struct Setting: Sendable, Hashable {
        public var name: String
        public var value: String
        public var source: String
    }

    /// The alias written in `server`.
    public var alias: String
    /// The ssh_config file read.
    public var file: String
    public var settings: [Setting]
}

/// Where in the configuration something was written.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }
    public var description: String { "\(file):\(line)" }
}

/// A host and a port. The host is a name, an IPv4 address or an IPv6 address without brackets.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }
    /// `host:port`, with brackets around an IPv6 address.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// The local socket a service listens on. `host` is a numeric address (`0.0.0.0` or `::` for `*`).
public typealias ListenAddress = Endpoint

/// What to do when the server's host key is not in known_hosts.
public enum HostKeyPolicy: String, Sendable, Hashable {
    /// Refuse unknown and changed keys.
    case strict
    /// Pin an unknown key on first use; refuse changed keys.
    case acceptNew = "accept-new"
}

/// SSH keepalive: probe after `interval` idle seconds; `count` unanswered probes kill the session.
public struct Keepalive: Sendable, Hashable {
    public var interval: Double
    public var count: Int
    public init(interval: Double = 15, count: Int = 3) {
        self.interval = interval
        self.count = count
    }
}

/// xinetd's `cps = RATE SECONDS`: over `rate` new connections a second, stop accepting for `pause` seconds.
public struct ConnectionRate: Sendable, Hashable {
    public var rate: Int
    public var pause: Double
    public init(rate: Int, pause: Double) {
        self.rate = rate
        self.pause = pause
    }
}

/// One `only_from` / `no_access` entry.
public enum AddressMatch: Sendable, Hashable {
    /// An address block; a single address is a block with the full prefix length.
    /// `address` holds 4 bytes for IPv4 or 16 for IPv6.
    case network(address: [UInt8], prefixLength: Int)
    /// A host name, resolved when a client is checked.
    case hostname(String)
}

/// The identity of an SSH session that services may share.
public struct SessionKey: Sendable, Hashable {
    public var server: Endpoint
    public var user: String
    public var identities: [String]
    public var identityPassphraseFile: String?
    public var identityAgent: String?
    public var passwordFile: String?
    public var knownHosts: [String]
    public var hostKeyPolicy: HostKeyPolicy
    public var fingerprint: String?
}

/// One `permit` entry of a SOCKS service: a host pattern (`*` and `?` match, case-insensitive)
/// and a port, or `*` for any port.
public struct PermitRule: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16?

    /// Parses `HOST:PORT`, `[IPv6]:PORT`; PORT may be `*`.
    public init?(_ text: String) {
        var hostPart: Substring
        var portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") { return nil }
        }
        guard !hostPart.isEmpty else { return nil }
        host = hostPart.lowercased()
        if portPart == "*" {
            port = nil
        } else if let number = UInt16(portPart), number > 0 {
            port = number
        } else {
            return nil
        }
    }

    /// Whether a client may reach `host`:`port` by this rule.
    public func allows(host candidate: String, port candidatePort: UInt16) -> Bool {
        if let port, port != candidatePort { return false }
        return Self.wildcard(Array(candidate.lowercased()), Array(host))
    }

    public var description: String {
        let hostText = host.contains(":") ? "[\(host)]" : host
        return "\(hostText):\(port.map(String.init) ?? "*")"
    }

    private static func wildcard(_ name: [Character], _ pattern: [Character]) -> Bool {
        var n = 0, p = 0, star = -1, mark = 0
        while n < name.count {
            if p < pattern.count && (pattern[p] == "?" || pattern[p] == name[n]) {
                n += 1
                p += 1
            } else if p < pattern.count && pattern[p] == "*" {
                star = p
                mark = n
                p += 1
            } else if star >= 0 {
                p = star + 1
                mark += 1
                n = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}
