import FoundationEssentials

/// The parts a `Service` is composed of, each built from its attributes in one place.
extension ServiceBuilder {
    /// `port`, `bind` (or xinetd's `interface`) and the address family flags.
    mutating func buildListening() -> Listening? {
        let serviceNames = names
        let port: UInt16? = values["port"] == nil ? nil : parse("port") { ValueParser.port($0, names: serviceNames) }
        if values["port"] == nil { error(nil, "no port; add port = NUMBER (the local port to listen on)") }
        var listenHost = "127.0.0.1"
        // localhost (and the default) is both loopbacks: clients resolve localhost to ::1 first.
        var isLocalhost = true
        if values[bindAttribute] != nil, let text = single(bindAttribute) {
            isLocalhost = text.lowercased() == "localhost"
            if let host = Self.listenHost(text) {
                listenHost = host
            } else {
                error(bindAttribute, "bind '\(text)' is not an address; use an IPv4 or IPv6 address, localhost, or *")
            }
        }
        var alsoListenHosts: [String] = []
        if isLocalhost {
            let flags = Set((values["flags"]?.words ?? []).map { $0.uppercased() })
            switch (flags.contains("IPV4"), flags.contains("IPV6")) {
            case (true, false): break
            case (false, true): listenHost = "::1"
            default: alsoListenHosts = ["::1"]
            }
        } else {
            checkAddressFamilyFlags(listenHost: listenHost)
        }
        guard let port else { return nil }
        return Listening(address: Endpoint(host: listenHost, port: port), alsoListen: alsoListenHosts.map { Endpoint(host: $0, port: port) })
    }

    /// `bind`, or xinetd's name for it.
    var bindAttribute: String { values["bind"] != nil ? "bind" : "interface" }

    /// `server`, `user`, `server_args` (or the xinetd command form), `ssh_config`, keys,
    /// password and host key rules, `type = SOCKS` and `permit`.
    mutating func buildRouteAndForwarding() -> (Route?, Forwarding?) {
        var (sshHost, sshPort, login, home, commandIdentities, target) = resolveServerAndTarget()
        let alias = sshHost
        // With the command form's `user`, home is that account's; else ssh_config's home is HOME.
        let configHome = home == environment.homeDirectory ? environment.sshConfigHome : home
        sshConfigHost = alias.flatMap { lookUpSSHConfig(alias: $0, home: configHome) }
        sshConfigAlias = alias
        if let (config, _) = sshConfigHost, let alias {
            let written = values["server"].flatMap { $0.words.first }.flatMap(Self.serverAddress)
            if let hostName = config.value("hostname") {
                if let checked = ValueParser.host(hostName) {
                    sshHost = checked
                } else {
                    error("ssh_config", "ssh_config gives HostName \(hostName) for \(alias), which is not a host name or address; fix the ssh_config file")
                }
            }
            recordSSHConfig("hostname", sshHost ?? alias, fromFile: config.value("hostname") != nil, fromStanza: true)
            let portFromFile = written?.port == nil ? config.value("port").flatMap { UInt16($0) } : nil
            if let portFromFile { sshPort = portFromFile }
            recordSSHConfig("port", String(sshPort), fromFile: portFromFile != nil, fromStanza: written?.port != nil)
            let userFromFile = values["user"] == nil && written?.user == nil ? config.value("user") : nil
            if let userFromFile { login = userFromFile }
            recordSSHConfig("user", login, fromFile: userFromFile != nil, fromStanza: values["user"] != nil || written?.user != nil)
        }

        var identities = resolveIdentities(home: home) + commandIdentities.map { expand($0, home: home, attribute: "server_args") }
        let writtenIdentities = identities
        if identities.isEmpty, let (config, _) = sshConfigHost, let files = config["identityfile"] {
            let paths = files.compactMap { sshConfigPath($0, home: configHome, host: sshHost ?? "", port: sshPort, user: login) }
            // As ssh does, files that do not exist are skipped.
            identities = paths.filter { FileManager.default.fileExists(atPath: $0) }
        }
        let identitiesFromFile = sshConfigHost != nil && values["identity"] == nil && commandIdentities.isEmpty && !identities.isEmpty
        if identities.isEmpty {
            identities = Self.defaultIdentities(home: home)
        } else {
            checkIdentityFiles(identities)
        }
        let passphraseFile = values["identity_passphrase_file"] != nil ? single("identity_passphrase_file").map { expand($0, home: home, attribute: "identity_passphrase_file") } : nil
        if let passphraseFile { checkSecretFile(passphraseFile, attribute: "identity_passphrase_file") }
        let passwordFile = values["password_file"] != nil ? single("password_file").map { expand($0, home: home, attribute: "password_file") } : nil
        if let passwordFile { checkSecretFile(passwordFile, attribute: "password_file") }
        var agent = environment.agentSocket
        if values["identity_agent"] != nil, let text = single("identity_agent") {
            agent = text.lowercased() == "none" ? nil : expand(text, home: home, attribute: "identity_agent")
        }
        var knownHosts = values["known_hosts"]?.words.map { expand($0, home: home, attribute: "known_hosts") } ?? []
        let writtenKnownHosts = knownHosts
        var knownHostsFromFile = false
        if knownHosts.isEmpty, let (config, _) = sshConfigHost, let files = config["userknownhostsfile"] {
            knownHosts = files.flatMap { $0.split(separator: " ").map(String.init) }
                .compactMap { sshConfigPath($0, home: configHome, host: sshHost ?? "", port: sshPort, user: login) }
            knownHostsFromFile = !knownHosts.isEmpty
        }
        if knownHosts.isEmpty { knownHosts = Self.defaultKnownHosts(home: home) }
        var policy = HostKeyPolicy.strict
        var policyFromFile = false
        if values["host_key"] != nil, let text = single("host_key") {
            if let value = HostKeyPolicy(rawValue: text.lowercased()) {
                policy = value
            } else {
                error("host_key", "host_key '\(text)' is not strict or accept-new")
            }
        } else if let (config, _) = sshConfigHost, let text = config.value("stricthostkeychecking") {
            switch text.lowercased() {
            case "yes", "true": policyFromFile = true
            case "accept-new":
                policy = .acceptNew
                policyFromFile = true
            case "no", "off", "false":
                warning("ssh_config", "ssh_config sets StrictHostKeyChecking \(text) for \(alias ?? ""); tunneld never accepts a changed host key, so it uses accept-new; set host_key to say so")
                policy = .acceptNew
                policyFromFile = true
            default: break
            }
        }
        if sshConfigHost != nil {
            recordSSHConfig("identity", identities.joined(separator: " "), fromFile: identitiesFromFile, fromStanza: values["identity"] != nil)
            recordSSHConfig("known_hosts", knownHosts.joined(separator: " "), fromFile: knownHostsFromFile, fromStanza: values["known_hosts"] != nil)
            recordSSHConfig("host_key", policy.rawValue, fromFile: policyFromFile, fromStanza: values["host_key"] != nil)
        }
        let fingerprint = values["fingerprint"] == nil ? nil : parse("fingerprint", ValueParser.fingerprint)
        let permit = resolvePermit()

        let flagFamily = addressFamilyFlag
        let family = flagFamily ?? sshConfigHost.flatMap { Self.addressFamily(sshConfig: $0.host) } ?? .any
        if let sshHost { checkAddressFamily(family, server: sshHost) }
        var route = sshHost.map { host in
            Route(server: Endpoint(host: host, port: sshPort), user: login, identities: identities, identityPassphraseFile: passphraseFile,
                  identityAgent: agent, passwordFile: passwordFile, knownHosts: knownHosts, hostKeyPolicy: policy, fingerprint: fingerprint,
                  addressFamily: family)
        }
        // Jump hosts log in with what the stanza says (not what ssh_config says of the server).
        let hopTemplate = Route(
            server: Endpoint(host: "", port: 22), user: "", identities: writtenIdentities.isEmpty ? Self.defaultIdentities(home: home) : writtenIdentities,
            identityPassphraseFile: passphraseFile, identityAgent: agent,
            knownHosts: writtenKnownHosts.isEmpty ? Self.defaultKnownHosts(home: home) : writtenKnownHosts,
            hostKeyPolicy: values["host_key"] != nil ? policy : .strict, addressFamily: flagFamily ?? .any)
        route?.jump = buildJump(template: hopTemplate, configHome: configHome)
        return (route, target.map { Forwarding(target: $0, isSocks: isSocks, permit: permit) })
    }

    /// `flags = IPv4` or `flags = IPv6` (not both): the one family to reach SSH servers over.
    var addressFamilyFlag: AddressFamily? {
        let flags = Set((values["flags"]?.words ?? []).map { $0.uppercased() })
        switch (flags.contains("IPV4"), flags.contains("IPV6")) {
        case (true, false): return .ipv4
        case (false, true): return .ipv6
        default: return nil
        }
    }

    /// ssh_config's `AddressFamily` (`inet`, `inet6`; `any` is the default ssh -G leaves out).
    static func addressFamily(sshConfig config: SSHConfigHost) -> AddressFamily? {
        switch config.value("addressfamily")?.lowercased() {
        case "inet": return .ipv4
        case "inet6": return .ipv6
        default: return nil
        }
    }

    /// A server written as an address of the family the service rules out can never be reached.
    mutating func checkAddressFamily(_ family: AddressFamily, server: String) {
        let isIPv6 = ValueParser.ipv6(server) != nil
        let isIPv4 = ValueParser.ipv4(server) != nil
        if (family == .ipv4 && isIPv6) || (family == .ipv6 && isIPv4) {
            let source = addressFamilyFlag != nil ? "flags \(family.rawValue)" : "ssh_config's AddressFamily"
            error("server", "server \(server) is an \(isIPv6 ? "IPv6" : "IPv4") address, but \(source) allows \(family.rawValue) only; remove the flag or name the server by an address of that family")
        }
    }

    /// Notes where a setting of an ssh_config service came from, for `--check`.
    mutating func recordSSHConfig(_ name: String, _ value: String, fromFile: Bool, fromStanza: Bool) {
        sshConfigSettings.append(.init(name: name, value: value, source: fromFile ? "ssh_config" : fromStanza ? "stanza" : "default"))
    }

    /// `linger`, `persistent`, `sessions`, `keepalive`, `connect_timeout`, `probe`.
    mutating func buildPolicy() -> SessionPolicy {
        let linger = values["linger"] == nil ? 30 : parse("linger") { ValueParser.seconds($0, atMost: .day) } ?? 30
        let persistent = values["persistent"] == nil ? false : parse("persistent", ValueParser.flag) ?? false
        let (sessions, mostSessions) = resolveSessions()
        var keepalive = resolveKeepalive()
        var connectTimeout = values["connect_timeout"] == nil ? 10 : parse("connect_timeout") { ValueParser.seconds($0, allowZero: false, atMost: .tenMinutes) } ?? 10
        if let (config, _) = sshConfigHost {
            var keepaliveFromFile = false
            var connectTimeoutFromFile = false
            if values["connect_timeout"] == nil, let seconds = config.value("connecttimeout").flatMap(Int.init), (1...600).contains(seconds) {
                connectTimeout = Double(seconds)
                connectTimeoutFromFile = true
            }
            if values["keepalive"] == nil {
                let interval = config.value("serveraliveinterval").flatMap(Int.init).flatMap { (1...3600).contains($0) ? Double($0) : nil }
                let count = config.value("serveralivecountmax").flatMap(Int.init).flatMap { (1...100).contains($0) ? $0 : nil }
                if interval != nil || count != nil {
                    keepalive = Keepalive(interval: interval ?? keepalive.interval, count: count ?? keepalive.count)
                    keepaliveFromFile = true
                }
            }
            recordSSHConfig("connect_timeout", connectTimeout.secondsText, fromFile: connectTimeoutFromFile, fromStanza: values["connect_timeout"] != nil)
            recordSSHConfig("keepalive", "\(keepalive.interval.secondsText) \(keepalive.count)", fromFile: keepaliveFromFile, fromStanza: values["keepalive"] != nil)
        }
        var probeInterval = values["probe"] == nil ? nil : parse("probe") { ValueParser.seconds($0, allowZero: false, atMost: .day) }
        if probeInterval != nil && !persistent {
            warning("probe", "probe works with persistent = yes only (a probe would keep the session up); it is ignored")
            probeInterval = nil
        }
        return SessionPolicy(linger: linger, isPersistent: persistent, sessions: sessions, mostSessions: mostSessions, probeInterval: probeInterval,
                             keepalive: keepalive, connectTimeout: connectTimeout)
    }

    /// `instances`, `per_source`, `cps`.
    mutating func buildLimits() -> Limits {
        let instances = values["instances"] == nil ? nil : parse("instances", ValueParser.limit) ?? nil
        let perSource = values["per_source"] == nil ? nil : parse("per_source", ValueParser.limit) ?? nil
        return Limits(instances: instances, perSource: perSource, cps: resolveRate())
    }

    /// `only_from` and `no_access`; a listener beyond loopback without `only_from` is warned about.
    mutating func buildAccess(listeningOn listenHost: String) -> AccessRules {
        let onlyFrom = values["only_from"] == nil ? nil : resolveMatches("only_from")
        let noAccess = resolveMatches("no_access")
        if values["only_from"]?.words.isEmpty == true {
            warning("only_from", "only_from is empty, so nobody may connect (as in xinetd); list the client addresses, or remove only_from to admit anyone")
        }
        if !Self.isLoopback(listenHost) && values["only_from"] == nil {
            warning(values[bindAttribute] == nil ? nil : bindAttribute, "listens on \(listenHost), beyond this machine, with no only_from; anyone who reaches the port can use the tunnel; add only_from = ADDRESSES")
        }
        return AccessRules(onlyFrom: onlyFrom, noAccess: noAccess)
    }
}

extension ServiceBuilder {
    /// `refusal`: how a client that cannot have its tunnel is told why; `none` when unset.
    /// A SOCKS client is already told in SOCKS's own reply, so there it is a warning.
    mutating func buildRefusal(isSocks: Bool) -> RefusalProtocol {
        guard values["refusal"] != nil, let text = single("refusal") else { return .none }
        guard let refusal = RefusalProtocol(rawValue: text.lowercased()) else {
            error("refusal", "refusal '\(text)' is not one of \(RefusalProtocol.allCases.map(\.rawValue).joined(separator: ", "))")
            return .none
        }
        if isSocks && refusal != .none {
            warning("refusal", "refusal = \(text) has no meaning for a SOCKS service (its clients get a SOCKS reply); ignored")
            return .none
        }
        return refusal
    }

    /// `log_type`: where the service's lines go; `nil` when unset (with the daemon's).
    mutating func buildLogType() -> LogType? {
        guard let value = values["log_type"] else { return nil }
        switch LogType.parse(value.words) {
        case .success(let logType): return logType
        case .failure(let message):
            error("log_type", "\(message)")
            return nil
        }
    }
}
