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

    /// `server`, `user`, `server_args` (or the xinetd command form), keys and host key rules,
    /// `type = SOCKS` and `permit`.
    mutating func buildRouteAndForwarding() -> (Route?, Forwarding?) {
        let (sshHost, sshPort, login, home, commandIdentities, target) = resolveServerAndTarget()

        var identities = resolveIdentities(home: home) + commandIdentities.map { expand($0, home: home, attribute: "server_args") }
        if identities.isEmpty {
            identities = ["\(home)/.ssh/id_ed25519", "\(home)/.ssh/id_ecdsa"]
        } else {
            checkIdentityFiles(identities)
        }
        let passphraseFile = values["identity_passphrase_file"] != nil ? single("identity_passphrase_file").map { expand($0, home: home, attribute: "identity_passphrase_file") } : nil
        if let passphraseFile { checkSecretFile(passphraseFile, attribute: "identity_passphrase_file") }
        var agent = environment.agentSocket
        if values["identity_agent"] != nil, let text = single("identity_agent") {
            agent = text.lowercased() == "none" ? nil : expand(text, home: home, attribute: "identity_agent")
        }
        var knownHosts = values["known_hosts"]?.words.map { expand($0, home: home, attribute: "known_hosts") } ?? []
        if knownHosts.isEmpty { knownHosts = ["\(home)/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"] }
        var policy = HostKeyPolicy.strict
        if values["host_key"] != nil, let text = single("host_key") {
            if let value = HostKeyPolicy(rawValue: text.lowercased()) {
                policy = value
            } else {
                error("host_key", "host_key '\(text)' is not strict or accept-new")
            }
        }
        let fingerprint = values["fingerprint"] == nil ? nil : parse("fingerprint", ValueParser.fingerprint)
        let permit = resolvePermit()

        let route = sshHost.map { host in
            Route(server: Endpoint(host: host, port: sshPort), user: login, identities: identities, identityPassphraseFile: passphraseFile,
                  identityAgent: agent, knownHosts: knownHosts, hostKeyPolicy: policy, fingerprint: fingerprint)
        }
        return (route, target.map { Forwarding(target: $0, isSocks: isSocks, permit: permit) })
    }

    /// `linger`, `persistent`, `sessions`, `keepalive`, `connect_timeout`, `probe`.
    mutating func buildPolicy() -> SessionPolicy {
        let linger = values["linger"] == nil ? 30 : parse("linger") { ValueParser.seconds($0, atMost: .day) } ?? 30
        let persistent = values["persistent"] == nil ? false : parse("persistent", ValueParser.flag) ?? false
        let sessions = values["sessions"] == nil ? 4 : parse("sessions", ValueParser.sessionCount) ?? 4
        let keepalive = resolveKeepalive()
        let connectTimeout = values["connect_timeout"] == nil ? 10 : parse("connect_timeout") { ValueParser.seconds($0, allowZero: false, atMost: .tenMinutes) } ?? 10
        var probeInterval = values["probe"] == nil ? nil : parse("probe") { ValueParser.seconds($0, allowZero: false, atMost: .day) }
        if probeInterval != nil && !persistent {
            warning("probe", "probe works with persistent = yes only (a probe would keep the session up); it is ignored")
            probeInterval = nil
        }
        return SessionPolicy(linger: linger, isPersistent: persistent, sessions: sessions, probeInterval: probeInterval,
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
