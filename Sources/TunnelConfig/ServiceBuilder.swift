import FoundationEssentials
import Glibc

/// Turns one stanza's attribute values (defaults applied) into a `Service`, or into the
/// errors that keep it from running. Warnings do not stop it.
struct ServiceBuilder {
    let name: String
    let location: SourceLocation
    let values: AttributeValues
    let environment: ConfigurationLoader.Environment
    let names: ServiceNames

    private(set) var diagnostics: [Diagnostic] = []
    private(set) var hasError = false
    /// With `ssh_config`: what OpenSSH said about the alias in `server`, and where each
    /// setting came from, for `--check`. Set while the route is built; read by the policy.
    var sshConfigHost: (host: SSHConfigHost, file: String)?
    var sshConfigAlias: String?
    var sshConfigSettings: [SSHConfigResolution.Setting] = []
    /// Jump hosts the command form gave (`-J`, `-o ProxyJump=`), for `buildJump`.
    var commandJumps: [String]?

    init(name: String, location: SourceLocation, values: AttributeValues, environment: ConfigurationLoader.Environment, names: ServiceNames) {
        self.name = name
        self.location = location
        self.values = values
        self.environment = environment
        self.names = names
    }

    func place(_ attribute: String) -> SourceLocation {
        values[attribute].map { SourceLocation(file: $0.file, line: $0.line) } ?? location
    }

    mutating func error(_ attribute: String?, _ message: String) {
        hasError = true
        diagnostics.append(Diagnostic(.error, at: attribute.map(place) ?? location, service: name, message))
    }

    mutating func warning(_ attribute: String?, _ message: String) {
        diagnostics.append(Diagnostic(.warning, at: attribute.map(place) ?? location, service: name, message))
    }

    /// The one value of `attribute`, or nil (with an error if it has more or none).
    mutating func single(_ attribute: String) -> String? {
        guard let value = values[attribute] else { return nil }
        guard value.words.count == 1 else {
            error(attribute, value.words.isEmpty ? "\(attribute) has no value" : "\(attribute) takes one value, not \(value.words.count): \(value.words.joined(separator: " "))")
            return nil
        }
        return value.words[0]
    }

    mutating func parse<T>(_ attribute: String, _ parser: (String) -> Result<T, Message>) -> T? {
        guard let text = single(attribute) else { return nil }
        switch parser(text) {
        case .success(let value): return value
        case .failure(let message):
            error(attribute, "\(attribute): \(message)")
            return nil
        }
    }

    /// Returns the service, or `.failed` when it has errors. Each part is built in one place:
    /// where to listen, the route to the SSH server, where channels go, the session policy,
    /// the limits, the access rules and the log fields.
    mutating func build() -> BuildResult {
        checkAttributeNames()
        checkXinetdCompatibility()
        // The loader takes `disable = yes` stanzas out before building; any other value is checked here.
        _ = parse("disable", ValueParser.flag)
        let listening = buildListening()
        let (route, forwarding) = buildRouteAndForwarding()
        let policy = buildPolicy()
        let limits = buildLimits()
        let access = buildAccess(listeningOn: listening?.address.host ?? "127.0.0.1")
        let logFields = LogFields(onSuccess: resolveLogFields("log_on_success"), onFailure: resolveLogFields("log_on_failure"))
        let refusal = buildRefusal(isSocks: forwarding?.isSocks ?? false)
        let logType = buildLogType()
        guard !hasError, let listening, let route, let forwarding else { return .failed }
        let sshConfig = sshConfigHost.map { SSHConfigResolution(alias: sshConfigAlias ?? "", file: $0.file, settings: sshConfigSettings) }
        let service = Service(
            name: name, location: location, listening: listening, route: route, forwarding: forwarding,
            policy: policy, limits: limits, access: access, logFields: logFields, refusal: refusal, logType: logType, sshConfig: sshConfig)
        checkKnownHosts(service)
        return .built(service)
    }

    enum BuildResult {
        case built(Service)
        case failed
    }

    // MARK: Attribute names and xinetd's

    mutating func checkAttributeNames() {
        for attribute in values.names.sorted() {
            if AttributeTable.global[attribute] != nil {
                warning(attribute, "\(attribute) applies to the whole daemon; move it into defaults { }")
            } else if AttributeTable.kind(of: attribute) == nil {
                warning(attribute, "unknown attribute \(attribute); ignored")
            }
        }
    }

    mutating func checkXinetdCompatibility() {
        if let text = values["socket_type"].flatMap({ $0.words.first }), text.lowercased() != "stream" {
            error("socket_type", "socket_type = \(text): tunneld carries TCP streams only; set socket_type = stream or remove it")
        }
        if let text = values["protocol"].flatMap({ $0.words.first }), text.lowercased() != "tcp" {
            error("protocol", "protocol = \(text): tunneld carries TCP streams only; set protocol = tcp or remove it")
        }
        if let text = values["wait"].flatMap({ $0.words.first }), ValueParser.flag(text) != .success(false) {
            error("wait", "wait = \(text): tunneld accepts every connection itself; set wait = no or remove it")
        }
        for flag in values["flags"]?.words ?? [] where !["REUSE", "NODELAY", "KEEPALIVE", "IPV4", "IPV6", "NOLIBWRAP", "NAMEINARGS"].contains(flag.uppercased()) {
            warning("flags", "flag \(flag) has no meaning for tunneld; ignored")
        }
        for type in values["type"]?.words ?? [] where !["UNLISTED", "SOCKS"].contains(type.uppercased()) {
            warning("type", "type \(type) has no meaning for tunneld; ignored")
        }
    }

    /// xinetd's `flags = IPv4` / `IPv6` choose the socket's family; tunneld's listening family
    /// is `bind`'s, and the flag restricts the connection to the SSH server. A flag that
    /// disagrees with `bind` is a warning, never silently dropped.
    mutating func checkAddressFamilyFlags(listenHost: String) {
        let isIPv6 = ValueParser.ipv6(listenHost) != nil
        switch addressFamilyFlag {
        case .ipv6? where !isIPv6:
            warning("flags", "flags IPv6 makes tunneld reach the SSH server over IPv6 only, but it listens on bind's address (\(listenHost), IPv4); set bind = ::1 (or ::) to listen on IPv6")
        case .ipv4? where isIPv6:
            warning("flags", "flags IPv4 makes tunneld reach the SSH server over IPv4 only, but it listens on bind's address (\(listenHost), IPv6); set bind = 127.0.0.1 (or *) to listen on IPv4")
        default:
            break
        }
    }

    /// Whether `type` holds SOCKS: clients name their targets with SOCKS5.
    var isSocks: Bool {
        (values["type"]?.words ?? []).contains { $0.uppercased() == "SOCKS" }
    }

    /// `permit = HOST:PORT …` of a SOCKS service: the targets its clients may name.
    mutating func resolvePermit() -> [PermitRule] {
        guard let words = values["permit"]?.words else { return [] }
        guard isSocks else {
            warning("permit", "permit limits the targets of a type = SOCKS service; this service's target is server_args, so permit is ignored")
            return []
        }
        var rules: [PermitRule] = []
        for word in words {
            if let rule = PermitRule(word) {
                rules.append(rule)
                if rule.mixesAddressAndName {
                    warning("permit", "permit '\(word)' is a name pattern that looks like an address; it matches host names only, never an address literal: write an address pattern (10.9.8.*, 10.9.8.0/24) or a name pattern (*.example.org)")
                }
            } else {
                error("permit", "permit '\(word)' is not HOST:PORT; write e.g. permit = mail.example.org:25 *.example.org:443 10.9.8.0/24:* [2001:db8::1]:* (* matches any)")
            }
        }
        return rules
    }

    /// Whether `flags` holds NAMEINARGS: server_args then starts with the program's name.
    var isNameInArgs: Bool {
        (values["flags"]?.words ?? []).contains { $0.uppercased() == "NAMEINARGS" }
    }

    // MARK: Server and target

    mutating func resolveServerAndTarget() -> (String?, UInt16, String, String, [String], Endpoint?) {
        var login = environment.userName
        var home = environment.homeDirectory
        guard values["server"] != nil, let serverText = single("server") else {
            if values["server"] == nil { error(nil, "no server; add server = [USER@]HOST[:PORT] (the SSH server to go through)") }
            return (nil, 22, login, home, [], nil)
        }
        let localUser = values["user"] == nil ? nil : single("user")

        if XinetdCommand.isSSHCommand(serverText) {
            // xinetd's form: `user` is the local account whose ~/.ssh is used.
            if let localUser {
                guard let accountHome = environment.homeDirectory(of: localUser) else {
                    error("user", "user \(localUser) is not an account on this machine; xinetd's user names the local account whose ~/.ssh keys are used")
                    return (nil, 22, login, home, [], nil)
                }
                login = localUser
                home = accountHome
            }
            guard var arguments = values["server_args"]?.words, !arguments.isEmpty else {
                error(nil, "server = \(serverText) needs server_args = [options] [user@]host nc HOST PORT")
                return (nil, 22, login, home, [], nil)
            }
            // xinetd's NAMEINARGS: the first word is the program's name (argv[0]), not an argument.
            if isNameInArgs { arguments.removeFirst() }
            switch XinetdCommand.parse(arguments, names: names) {
            case .failure(let message):
                error("server_args", message.text)
                return (nil, 22, login, home, [], nil)
            case .success(let command):
                commandJumps = command.jumps
                if !command.ignoredOptions.isEmpty {
                    warning("server_args", "ssh options \(command.ignoredOptions.joined(separator: " ")) are ignored; tunneld makes the connection itself")
                }
                return (command.host, command.port ?? 22, command.user ?? login, home, command.identities, command.target)
            }
        }

        if isNameInArgs {
            error("flags", "flags NAMEINARGS means server_args starts with the program name, which only the command form (server = /usr/bin/ssh) has; remove NAMEINARGS")
        }
        guard let server = Self.serverAddress(serverText) else {
            error("server", "server '\(serverText)' is not [USER@]HOST[:PORT]; write e.g. server = tunnel@bastion.example.org:22 or [2001:db8::1]:2222")
            return (nil, 22, login, home, [], nil)
        }
        if let serverUser = server.user { login = serverUser }
        if let localUser {
            if let serverUser = server.user, serverUser != localUser {
                warning("user", "user = \(localUser) and server = \(serverText) name different login names; logging in as \(localUser)")
            }
            login = localUser
        }
        var target: Endpoint?
        if isSocks {
            // The client names each target; permit bounds them.
            if values["server_args"] != nil {
                error("server_args", "a type = SOCKS service takes its targets from its clients; remove server_args (use permit = HOST:PORT to limit them)")
            }
            return (server.host, server.port ?? 22, login, home, [], Service.socksTarget)
        }
        if let arguments = values["server_args"]?.words {
            if arguments.count == 2, let host = ValueParser.host(arguments[0]) {
                switch ValueParser.port(arguments[1], names: names) {
                case .success(let port): target = Endpoint(host: host, port: port)
                case .failure(let message): error("server_args", "server_args: \(message)")
                }
            } else {
                error("server_args", "server_args '\(arguments.joined(separator: " "))' is not HOST PORT; write the target as the SSH server sees it, e.g. server_args = localhost 25")
            }
        } else {
            error(nil, "no server_args; add server_args = HOST PORT (the target, as the SSH server sees it)")
        }
        return (server.host, server.port ?? 22, login, home, [], target)
    }

    /// `host`, `host:port`, `[v6]:port`, `user@…`.
    static func serverAddress(_ text: String) -> (user: String?, host: String, port: UInt16?)? {
        var rest = Substring(text)
        var user: String?
        if let at = rest.lastIndex(of: "@") {
            user = String(rest[..<at])
            rest = rest[rest.index(after: at)...]
            guard let user, !user.isEmpty, !user.contains(where: { $0 == ":" || $0 == "/" }) else { return nil }
        }
        var host = String(rest)
        var port: UInt16?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let value = Int(after.dropFirst()), (1...65535).contains(value) else { return nil }
                port = UInt16(value)
            }
            guard ValueParser.ipv6(host) != nil else { return nil }
        } else if rest.filter({ $0 == ":" }).count == 1, let colon = rest.firstIndex(of: ":") {
            host = String(rest[..<colon])
            guard let value = Int(rest[rest.index(after: colon)...]), (1...65535).contains(value) else { return nil }
            port = UInt16(value)
        }
        guard let checked = ValueParser.host(host) else { return nil }
        return (user, checked, port)
    }

    static func listenHost(_ text: String) -> String? {
        switch text.lowercased() {
        case "*", "0.0.0.0": return "0.0.0.0"
        case "localhost": return "127.0.0.1"
        default:
            var host = text
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            if ValueParser.ipv4(host) != nil || ValueParser.ipv6(host) != nil { return host }
            return nil
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        if let v4 = ValueParser.ipv4(host) { return v4[0] == 127 }
        if let v6 = ValueParser.ipv6(host) { return v6 == [UInt8](repeating: 0, count: 15) + [1] }
        return false
    }

    // MARK: ssh_config

    /// With `ssh_config = yes` (or a path), what OpenSSH says about the alias in `server`:
    /// `ssh -G`, reading `~/.ssh/config` of `home` (HOME, or run_as's home) or the file given.
    /// nil without ssh_config, or with an error recorded.
    mutating func lookUpSSHConfig(alias: String, home: String) -> (SSHConfigHost, file: String)? {
        guard values["ssh_config"] != nil, let text = single("ssh_config") else { return nil }
        if case .success(false) = ValueParser.flag(text) { return nil }
        if let serverText = values["server"]?.words.first, XinetdCommand.isSSHCommand(serverText) {
            error("ssh_config", "ssh_config resolves a Host alias in server = HOST; the command form (server = \(serverText)) has no alias; remove ssh_config")
            return nil
        }
        let isDefault = ValueParser.flag(text) == .success(true)
        let file = isDefault ? home + "/.ssh/config" : expand(text, home: home, attribute: "ssh_config")
        guard FileManager.default.isReadableFile(atPath: file) else {
            error("ssh_config", isDefault
                ? "ssh_config = yes reads \(file), which does not exist or cannot be read; create it, or set ssh_config = PATH"
                : "ssh_config \(file) does not exist or cannot be read; fix the path")
            return nil
        }
        switch SSHConfigLookup.resolve(alias: alias, file: file, home: home, ssh: environment.sshProgram) {
        case .failure(let message):
            error("ssh_config", "ssh_config: \(message.text)")
            return nil
        case .success(let host):
            return (host, file)
        }
    }

    /// A path from ssh -G (IdentityFile, UserKnownHostsFile) with `~` and ssh's `%d %h %p %r
    /// %u %%` tokens expanded; nil, with an error, for a token tunneld does not know.
    mutating func sshConfigPath(_ path: String, home: String, host: String, port: UInt16, user: String) -> String? {
        var result = ""
        var rest = Substring(path)
        if rest == "~" || rest.hasPrefix("~/") {
            result = home
            rest = rest.dropFirst()
        }
        while let percent = rest.firstIndex(of: "%") {
            result += rest[..<percent]
            let token = rest.index(after: percent)
            guard token < rest.endIndex else { break }
            switch rest[token] {
            case "d": result += home
            case "h": result += host
            case "p": result += String(port)
            case "r": result += user
            case "u": result += environment.userName
            case "%": result += "%"
            default:
                error("ssh_config", "ssh_config path \(path) holds %\(rest[token]), which tunneld does not expand (it knows %d %h %p %r %u %%); write the path out")
                return nil
            }
            rest = rest[rest.index(after: token)...]
        }
        return result + rest
    }

    // MARK: Files

    func expand(_ path: String, home: String, attribute: String) -> String {
        if path == "~" { return home }
        if path.hasPrefix("~/") { return home + path.dropFirst(1) }
        if path.hasPrefix("/") { return path }
        // Relative paths are relative to the file that names them.
        let file = values[attribute]?.file ?? location.file
        return PathText.joined(PathText.parent(of: file), path)
    }

    func resolveIdentities(home: String) -> [String] {
        (values["identity"]?.words ?? []).map { expand($0, home: home, attribute: "identity") }
    }

    mutating func checkIdentityFiles(_ paths: [String]) {
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else {
                error("identity", "identity \(path) does not exist; create a key with ssh-keygen -t ed25519 -f \(path), or fix the path")
                continue
            }
            if let problem = PrivateFile.problem(path, attribute: "identity", trust: environment.keyTrust) {
                error("identity", problem)
                continue
            }
            guard let head = FilePrefix.read(path, atMost: 16_384) else {
                error("identity", "identity \(path) cannot be read by this account; check its owner and mode")
                continue
            }
            if KeyFile.isRSA(Data(head)) {
                error("identity", "identity \(path) is an RSA key: libssh2 1.10 signs only with ssh-rsa (SHA-1), which OpenSSH 8.8 and later refuse; make an ed25519 key with ssh-keygen -t ed25519")
            }
        }
    }

    mutating func checkSecretFile(_ path: String, attribute: String) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            error(attribute, "\(attribute) \(path) does not exist")
            return
        }
        if let problem = PrivateFile.problem(path, attribute: attribute, trust: environment.keyTrust) {
            error(attribute, problem)
            return
        }
        if attribute == "password_file" {
            do {
                _ = try PrivateFile.readSecret(path, attribute: attribute, trust: environment.keyTrust)
            } catch let problem as FileProblem {
                error(attribute, problem.description)
            } catch {}
        }
    }

    /// Warns when the server's, or a jump host's, host key will be refused for want of a
    /// known_hosts entry; the fix names the command that fetches it (through the jump hosts).
    mutating func checkKnownHosts(_ service: Service) {
        let route = service.route
        let chain = route.jump + [route]
        for (index, hop) in chain.enumerated() {
            guard hop.fingerprint == nil, hop.hostKeyPolicy == .strict, let file = hop.knownHosts.first else { continue }
            let isJumpHost = index < route.jump.count
            let what = isJumpHost ? "jump host \(hop.server)" : "\(hop.server)"
            var scan = hop.server.port == 22 ? "ssh-keyscan \(hop.server.host)" : "ssh-keyscan -p \(hop.server.port) \(hop.server.host)"
            if index > 0 {
                // Only the hop before sees this one: run ssh-keyscan there.
                let previous = chain[index - 1]
                let login = previous.server.port == 22 ? "\(previous.user)@\(previous.server.host)" : "-p \(previous.server.port) \(previous.user)@\(previous.server.host)"
                scan = "ssh \(login) \(scan)"
            }
            let attribute = values["known_hosts"] == nil ? nil : "known_hosts"
            let existing = hop.knownHosts.filter { FileManager.default.fileExists(atPath: $0) }
            if existing.isEmpty {
                warning(attribute, "no known_hosts file (\(hop.knownHosts.joined(separator: ", "))) exists, so \(isJumpHost ? "the host key of \(what)" : "the server's host key") will be refused; after checking the key, run: \(scan) >> \(file)")
            } else if KnownHosts.load(paths: existing, hasher: environment.hostNameHasher).keys(forHost: hop.server.host, port: hop.server.port).isEmpty {
                warning(attribute, "known_hosts holds no key for \(what); after checking the key, run: \(scan) >> \(file)")
            }
        }
    }

    // MARK: Numbers and lists

    /// `sessions = N [MOST]`: the sessions that carry connections, and how many a burst may
    /// raise that to (N to N + 16; N + 16 by default).
    mutating func resolveSessions() -> (Int, Int?) {
        guard let value = values["sessions"] else { return (4, nil) }
        let words = value.words
        guard (1...2).contains(words.count) else {
            error("sessions", "sessions '\(words.joined(separator: " "))' is not N [MOST], e.g. sessions = 4 or sessions = 1 1")
            return (4, nil)
        }
        let count: Int
        switch ValueParser.sessionCount(words[0]) {
        case .success(let value):
            count = value
        case .failure(let message):
            error("sessions", "sessions: \(message)")
            return (4, nil)
        }
        guard words.count == 2 else { return (count, nil) }
        let allowance = SessionPolicy.burstAllowance
        guard let most = Int(words[1]), (count...count + allowance).contains(most) else {
            error("sessions", "sessions MOST '\(words[1])' is not a number from \(count) to \(count + allowance): a burst may raise \(count) sessions by at most \(allowance)")
            return (count, nil)
        }
        return (count, most)
    }

    mutating func resolveKeepalive() -> Keepalive {
        guard let value = values["keepalive"] else { return Keepalive() }
        let words = value.words
        guard (1...2).contains(words.count),
              case .success(let interval) = ValueParser.seconds(words[0], allowZero: false) else {
            error("keepalive", "keepalive '\(words.joined(separator: " "))' is not INTERVAL [COUNT], e.g. keepalive = 15 3")
            return Keepalive()
        }
        if case .failure(let message) = ValueParser.seconds(words[0], atMost: .hour) {
            error("keepalive", "keepalive interval \(message)")
            return Keepalive()
        }
        var count = 3
        if words.count == 2 {
            guard let value = Int(words[1]), (1...100).contains(value) else {
                error("keepalive", "keepalive count '\(words[1])' is not a number from 1 to 100")
                return Keepalive()
            }
            count = value
        }
        return Keepalive(interval: interval, count: count)
    }

    mutating func resolveRate() -> ConnectionRate? {
        guard let value = values["cps"] else { return nil }
        let words = value.words
        guard words.count == 2, let rate = Int(words[0]), rate > 0,
              case .success(let pause) = ValueParser.seconds(words[1], allowZero: false) else {
            error("cps", "cps '\(words.joined(separator: " "))' is not RATE SECONDS, e.g. cps = 50 10")
            return nil
        }
        guard rate <= 1_000_000 else {
            error("cps", "cps rate '\(words[0])' is not a number from 1 to 1000000")
            return nil
        }
        if case .failure(let message) = ValueParser.seconds(words[1], atMost: .day) {
            error("cps", "cps pause \(message)")
            return nil
        }
        return ConnectionRate(rate: rate, pause: pause)
    }

    mutating func resolveMatches(_ attribute: String) -> [AddressMatch] {
        var matches: [AddressMatch] = []
        for word in values[attribute]?.words ?? [] {
            switch ValueParser.addressMatch(word) {
            case .success(let match): matches.append(match)
            case .failure(let message): error(attribute, "\(attribute): \(message)")
            }
        }
        return matches
    }

    private static let logFields: Set<String> = ["PID", "HOST", "USERID", "EXIT", "DURATION", "TRAFFIC", "ATTEMPT"]

    mutating func resolveLogFields(_ attribute: String) -> Set<String> {
        guard let words = values[attribute]?.words else { return Self.logFields }
        var fields = Set<String>()
        for word in words {
            if Self.logFields.contains(word.uppercased()) {
                fields.insert(word.uppercased())
            } else {
                warning(attribute, "\(attribute) field \(word) is unknown; known: \(Self.logFields.sorted().joined(separator: " "))")
            }
        }
        return fields
    }
}

/// What a private key file's first bytes say about it.
enum KeyFile {
    /// Whether the key is RSA: a PEM `RSA PRIVATE KEY`, or an OpenSSH key whose public part is ssh-rsa.
    static func isRSA(_ head: Data) -> Bool {
        let text = String(decoding: head, as: UTF8.self)
        if text.contains("BEGIN RSA PRIVATE KEY") { return true }
        guard text.contains("BEGIN OPENSSH PRIVATE KEY") else { return false }
        // isNewline: a key saved with CRLF line ends has "\r\n" Characters, not "\n".
        let body = text.split(whereSeparator: \.isNewline).filter { !$0.hasPrefix("-----") }.joined()
        guard let blob = Data(base64Encoded: String(body.prefix(400 - 400 % 4))) ?? Data(base64Encoded: body) else { return false }
        return String(decoding: blob.prefix(200), as: UTF8.self).contains("ssh-rsa")
    }
}
