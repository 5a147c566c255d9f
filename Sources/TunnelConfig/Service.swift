/// The validated description of one service: what `tunneld` listens on and where it tunnels to.
///
/// Values here are final: defaults are applied, names are resolved to numbers, and the
/// xinetd command form is already translated. The tunnel reads nothing else. A service is
/// composed of a few values, each built in one place by `ServiceBuilder`; the properties
/// below them read and write through to those values.
public struct Service: Sendable, Equatable {
    /// The stanza's name (`service NAME {`).
    public var name: String
    /// Where the stanza was written, for messages.
    public var location: SourceLocation
    public var listening: Listening
    public var route: Route
    public var forwarding: Forwarding
    public var policy: SessionPolicy
    public var limits: Limits
    public var access: AccessRules
    public var logFields: LogFields
    /// The protocol in which a client that cannot have its tunnel is told why (`refusal`).
    public var refusal: RefusalProtocol
    /// Where the service's log lines go (`log_type`); `nil`: with the daemon's own.
    public var logType: LogType?
    /// How `server` was resolved as an ssh_config Host alias (`ssh_config`), for `--check`.
    public var sshConfig: SSHConfigResolution?

    public init(
        name: String, location: SourceLocation, listening: Listening, route: Route, forwarding: Forwarding,
        policy: SessionPolicy = SessionPolicy(), limits: Limits = Limits(), access: AccessRules = AccessRules(),
        logFields: LogFields = LogFields(), refusal: RefusalProtocol = .none, logType: LogType? = nil, sshConfig: SSHConfigResolution? = nil
    ) {
        self.logType = logType
        self.refusal = refusal
        self.sshConfig = sshConfig
        self.name = name
        self.location = location
        self.listening = listening
        self.route = route
        self.forwarding = forwarding
        self.policy = policy
        self.limits = limits
        self.access = access
        self.logFields = logFields
    }

    // MARK: Reading through

    /// The local address and port to accept clients on.
    public var listen: ListenAddress { get { listening.address } set { listening.address = newValue } }
    /// More addresses with the same port.
    public var alsoListen: [ListenAddress] { get { listening.alsoListen } set { listening.alsoListen = newValue } }
    public var server: Endpoint { get { route.server } set { route.server = newValue } }
    public var user: String { get { route.user } set { route.user = newValue } }
    public var identities: [String] { get { route.identities } set { route.identities = newValue } }
    public var identityPassphraseFile: String? { get { route.identityPassphraseFile } set { route.identityPassphraseFile = newValue } }
    public var identityAgent: String? { get { route.identityAgent } set { route.identityAgent = newValue } }
    public var passwordFile: String? { get { route.passwordFile } set { route.passwordFile = newValue } }
    public var knownHosts: [String] { get { route.knownHosts } set { route.knownHosts = newValue } }
    public var hostKeyPolicy: HostKeyPolicy { get { route.hostKeyPolicy } set { route.hostKeyPolicy = newValue } }
    public var fingerprint: String? { get { route.fingerprint } set { route.fingerprint = newValue } }
    public var addressFamily: AddressFamily { get { route.addressFamily } set { route.addressFamily = newValue } }
    public var target: Endpoint { get { forwarding.target } set { forwarding.target = newValue } }
    public var isSocks: Bool { get { forwarding.isSocks } set { forwarding.isSocks = newValue } }
    public var permit: [PermitRule] { get { forwarding.permit } set { forwarding.permit = newValue } }
    public var linger: Double { get { policy.linger } set { policy.linger = newValue } }
    public var isPersistent: Bool { get { policy.isPersistent } set { policy.isPersistent = newValue } }
    public var sessions: Int { get { policy.sessions } set { policy.sessions = newValue; policy.mostSessions = newValue + SessionPolicy.burstAllowance } }
    public var mostSessions: Int { get { policy.mostSessions } set { policy.mostSessions = newValue } }
    public var probeInterval: Double? { get { policy.probeInterval } set { policy.probeInterval = newValue } }
    public var keepalive: Keepalive { get { policy.keepalive } set { policy.keepalive = newValue } }
    public var connectTimeout: Double { get { policy.connectTimeout } set { policy.connectTimeout = newValue } }
    public var instances: Int? { get { limits.instances } set { limits.instances = newValue } }
    public var perSource: Int? { get { limits.perSource } set { limits.perSource = newValue } }
    public var cps: ConnectionRate? { get { limits.cps } set { limits.cps = newValue } }
    public var onlyFrom: [AddressMatch]? { get { access.onlyFrom } set { access.onlyFrom = newValue } }
    public var noAccess: [AddressMatch] { get { access.noAccess } set { access.noAccess = newValue } }

    /// The `target` of a SOCKS service, which has none of its own.
    public static let socksTarget = Endpoint(host: "socks", port: 0)

    /// Every address the service listens on, `listen` first.
    public var listenAddresses: [ListenAddress] { [listen] + alsoListen }

    /// The services that may share one SSH session: same route (server, login, keys and host-key rules).
    public var sessionKey: SessionKey { route }
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

/// Which address families a connection to the SSH server may use (`flags = IPv4` / `IPv6`,
/// ssh_config's `AddressFamily`), as ssh's `-4` / `-6`.
public enum AddressFamily: String, Sendable, Hashable {
    /// IPv6 and IPv4, raced (Happy Eyeballs).
    case any
    /// IPv4 only (`flags = IPv4`, `AddressFamily inet`).
    case ipv4 = "IPv4"
    /// IPv6 only (`flags = IPv6`, `AddressFamily inet6`).
    case ipv6 = "IPv6"
}

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

/// The identity of an SSH session that services may share: their route.
public typealias SessionKey = Route

/// One `permit` entry of a SOCKS service: a host pattern and a port, or `*` for any port.
///
/// A pattern is of one kind and matches only requests of that kind, so that a name can never
/// pass an address rule (`10.9.8.7.attacker.example` and `10.9.8.*`) nor an address a name
/// rule: an address pattern (IPv4 digits and dots, or IPv6 with colons, with `*` and `?`, or a
/// CIDR block `10.9.8.0/24`, `[2001:db8::/32]`) matches address literals only, compared in
/// canonical form; a name pattern (OpenSSH's `*` and `?`, case-insensitive) matches names
/// only. A pattern of `*` alone matches any host.
public struct PermitRule: Sendable, Hashable, CustomStringConvertible {
    /// What a host pattern matches.
    public enum Kind: Sendable, Hashable {
        /// Any host: the pattern is `*`.
        case any
        /// Address literals, by wildcard on their canonical text.
        case addressPattern
        /// Address literals inside a block.
        case network(address: [UInt8], prefixLength: Int)
        /// Host names.
        case name
    }

    public var host: String
    public var port: UInt16?
    public var kind: Kind

    /// Parses `HOST:PORT`, `[IPv6]:PORT`, `CIDR:PORT`, `[IPv6/LEN]:PORT`; PORT may be `*`.
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
        guard let kind = Self.kind(of: host) else { return nil }
        self.kind = kind
    }

    /// The kind of a host pattern, or nil when it is neither a name nor an address pattern
    /// (a bad CIDR block, characters no host has).
    static func kind(of pattern: String) -> Kind? {
        if pattern.allSatisfy({ $0 == "*" }) { return .any }
        if let slash = pattern.firstIndex(of: "/") {
            guard let length = Int(pattern[pattern.index(after: slash)...]),
                  let address = HostSyntax.bytes(of: String(pattern[..<slash])),
                  (0...address.count * 8).contains(length) else { return nil }
            return .network(address: address, prefixLength: length)
        }
        let wild: Set<Character> = ["*", "?"]
        if pattern.contains(":") {
            let allowed = Set("0123456789abcdef:.").union(wild)
            return pattern.allSatisfy(allowed.contains) ? .addressPattern : nil
        }
        if pattern.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "." || wild.contains($0)) }) {
            return .addressPattern
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-_.").union(wild)
        return pattern.allSatisfy(allowed.contains) ? .name : nil
    }

    /// Whether a name pattern also looks like an address (`10.9.8.*.example.org`), a sign
    /// that it was meant as one: `--check` warns.
    public var mixesAddressAndName: Bool {
        guard kind == .name else { return false }
        let labels = host.split(separator: ".")
        return labels.contains { label in label.allSatisfy(\.isNumber) } && labels.contains { label in label.contains { $0.isLetter } }
    }

    /// Whether a client may reach `host`:`port` by this rule; `host` is an address literal
    /// or a name as the client sent it.
    public func allows(host candidate: String, port candidatePort: UInt16) -> Bool {
        if let port, port != candidatePort { return false }
        let literal = HostSyntax.bytes(of: candidate)
        switch kind {
        case .any:
            return true
        case .addressPattern:
            guard let literal else { return false }
            return Self.wildcard(Array(HostSyntax.text(of: literal)), Array(host))
        case .network(let network, let length):
            guard let literal, literal.count == network.count else { return false }
            return HostSyntax.prefix(network, literal, length)
        case .name:
            guard literal == nil else { return false }
            return Self.wildcard(Array(candidate.lowercased()), Array(host))
        }
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

extension Double {
    /// Seconds as a configuration writes them and messages say them: `3`, `0.5`.
    public var secondsText: String {
        self == rounded() ? String(Int(self)) : String(self)
    }
}
