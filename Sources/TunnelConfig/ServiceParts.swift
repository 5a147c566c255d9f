/// Where a service accepts clients.
public struct Listening: Sendable, Hashable {
    /// The first address; `bind`'s.
    public var address: ListenAddress
    /// More addresses with the same port: `[::1]` when `bind` is `localhost` (or not set).
    public var alsoListen: [ListenAddress]

    public init(address: ListenAddress, alsoListen: [ListenAddress] = []) {
        self.address = address
        self.alsoListen = alsoListen
    }
}

/// How a service reaches its SSH server: the server, the login, the keys and the host key
/// rules. Services with the same route share sessions.
public struct Route: Sendable, Hashable {
    /// The SSH server to log in to.
    public var server: Endpoint
    /// The SSH login name.
    public var user: String
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
    /// Jump hosts (`jump`, ProxyJump), first hop first, each a route of its own without jump
    /// hosts: the session to `server` runs over a channel of a session to the last hop.
    public var jump: [Route]
    /// The address families the TCP connection to `server` may use.
    public var addressFamily: AddressFamily

    public init(
        server: Endpoint, user: String, identities: [String] = [], identityPassphraseFile: String? = nil,
        identityAgent: String? = nil, passwordFile: String? = nil, knownHosts: [String] = [], hostKeyPolicy: HostKeyPolicy = .strict,
        fingerprint: String? = nil, jump: [Route] = [], addressFamily: AddressFamily = .any
    ) {
        self.jump = jump
        self.addressFamily = addressFamily
        self.passwordFile = passwordFile
        self.server = server
        self.user = user
        self.identities = identities
        self.identityPassphraseFile = identityPassphraseFile
        self.identityAgent = identityAgent
        self.knownHosts = knownHosts
        self.hostKeyPolicy = hostKeyPolicy
        self.fingerprint = fingerprint
    }
}

extension Route {
    /// The route to the last jump host, itself over the hops before it; nil without jump hosts.
    /// Its sessions carry this route's sessions, and are shared by every route behind it.
    public var jumpRoute: Route? {
        guard var last = jump.last else { return nil }
        last.jump = Array(jump.dropLast())
        return last
    }

    /// `user@host:port`.
    public var login: String { "\(user)@\(server)" }

    /// Every hop and the server, as `alice@bastion:22 -> tunnel@mail:22`.
    public var chain: String {
        (jump + [self]).map(\.login).joined(separator: " -> ")
    }
}

/// Where a service's channels go: its `server_args`, or (`type = SOCKS`) wherever each client
/// asks, within `permit`.
public struct Forwarding: Sendable, Hashable {
    /// The forward target as the SSH server sees it; `Service.socksTarget` for SOCKS.
    public var target: Endpoint
    /// `type = SOCKS`: each client names its target with SOCKS5.
    public var isSocks: Bool
    /// The targets a SOCKS service's clients may name; empty means any.
    public var permit: [PermitRule]

    public init(target: Endpoint, isSocks: Bool = false, permit: [PermitRule] = []) {
        self.target = target
        self.isSocks = isSocks
        self.permit = permit
    }
}

/// How a service's SSH sessions live.
public struct SessionPolicy: Sendable, Hashable {
    /// How many sessions beyond `sessions` a burst may start, by default and at most.
    public static let burstAllowance = 16

    /// Seconds an idle session stays up after its last channel closes.
    public var linger: Double
    /// Whether the session is kept up at all times.
    public var isPersistent: Bool
    /// How many SSH sessions to the server may carry this service's connections at once.
    public var sessions: Int
    /// How many sessions a burst of connections, or a load heavy on each session, may
    /// raise that to (`sessions = N MOST`); `sessions` + 16 unless the stanza says.
    public var mostSessions: Int
    /// Seconds between health probes of the target (persistent services), if probed.
    public var probeInterval: Double?
    /// SSH-level liveness checking.
    public var keepalive: Keepalive
    /// Seconds allowed for TCP connect, handshake, host-key check and authentication.
    public var connectTimeout: Double

    public init(
        linger: Double = 30, isPersistent: Bool = false, sessions: Int = 4, mostSessions: Int? = nil, probeInterval: Double? = nil,
        keepalive: Keepalive = Keepalive(), connectTimeout: Double = 10
    ) {
        self.linger = linger
        self.isPersistent = isPersistent
        self.sessions = sessions
        self.mostSessions = mostSessions ?? sessions + SessionPolicy.burstAllowance
        self.probeInterval = probeInterval
        self.keepalive = keepalive
        self.connectTimeout = connectTimeout
    }
}

/// How many clients a service takes (xinetd's `instances`, `per_source`, `cps`).
public struct Limits: Sendable, Hashable {
    /// Maximum live connections; `nil` is unlimited.
    public var instances: Int?
    /// Maximum live connections from one client address; `nil` is unlimited.
    public var perSource: Int?
    /// Connection-rate limit; `nil` is none.
    public var cps: ConnectionRate?

    public init(instances: Int? = nil, perSource: Int? = nil, cps: ConnectionRate? = nil) {
        self.instances = instances
        self.perSource = perSource
        self.cps = cps
    }
}

/// Who may use a service (xinetd's `only_from`, `no_access`).
public struct AccessRules: Sendable, Hashable {
    /// Clients allowed: `nil` (no only_from) admits anyone, an empty list nobody.
    public var onlyFrom: [AddressMatch]?
    /// Clients refused.
    public var noAccess: [AddressMatch]

    public init(onlyFrom: [AddressMatch]? = nil, noAccess: [AddressMatch] = []) {
        self.onlyFrom = onlyFrom
        self.noAccess = noAccess
    }
}

/// xinetd's `log_on_success` and `log_on_failure` fields, upper-cased.
public struct LogFields: Sendable, Hashable {
    public var onSuccess: Set<String>
    public var onFailure: Set<String>

    public init(onSuccess: Set<String> = [], onFailure: Set<String> = []) {
        self.onSuccess = onSuccess
        self.onFailure = onFailure
    }
}

/// `refusal`: the protocol in which tunneld tells a client why it cannot have its tunnel,
/// as that protocol's server would (`421` for SMTP, `-ERR`, `* BYE`, `502`); `none` closes
/// the client without a word, as a raw byte stream needs.
public enum RefusalProtocol: String, Sendable, Hashable, CaseIterable {
    case none, smtp, pop3, imap, http
}
