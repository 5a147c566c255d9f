import FoundationEssentials

/// `jump` (ssh's ProxyJump): the jump hosts a service's sessions go through, each built as a
/// route of its own.
extension ServiceBuilder {
    /// The most jump hosts one route may go through.
    static let maxJumpHops = 8

    static func defaultIdentities(home: String) -> [String] {
        ["\(home)/.ssh/id_ed25519", "\(home)/.ssh/id_ecdsa"]
    }

    static func defaultKnownHosts(home: String) -> [String] {
        ["\(home)/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"]
    }

    /// The jump hosts, first hop first: from `jump` (`none` for none), else the command
    /// form's `-J` or `-o ProxyJump=`, else ssh_config's ProxyJump (or `ProxyCommand ssh -W
    /// %h:%p HOST`) for the server's alias.
    ///
    /// Each hop is `template` (the stanza's keys, agent, known_hosts and host_key rule) with
    /// its own host and login: `user@` in the hop, else the account's name, as ssh does. With
    /// ssh_config, a hop is also looked up as a Host alias: its HostName, Port, User,
    /// IdentityFile, UserKnownHostsFile, StrictHostKeyChecking and its own ProxyJump apply.
    /// `fingerprint` and `password_file` are the final server's alone; `jump_fingerprint` pins hops.
    mutating func buildJump(template: Route, configHome: String) -> [Route] {
        var specs: [String] = []
        var attribute = "jump"
        var fromFile = false
        if let value = values["jump"] {
            specs = JumpHosts.list(value.words.joined(separator: ","))
            if value.words.isEmpty { error("jump", "jump has no value; write jump = [USER@]HOST[:PORT][,…], or jump = none") }
        } else if let commandJumps {
            specs = commandJumps
            attribute = "server_args"
        } else if let (config, _) = sshConfigHost {
            attribute = "ssh_config"
            if let text = config.value("proxyjump") {
                specs = JumpHosts.list(text)
                fromFile = true
            } else if let command = config.value("proxycommand"), command.lowercased() != "none" {
                guard let hop = JumpHosts.host(inProxyCommand: command) else {
                    error("ssh_config", "ssh_config gives \(sshConfigAlias ?? "the server") ProxyCommand \(command), which tunneld cannot run; only ssh -W %h:%p HOST is understood (as a jump host): use ProxyJump HOST, or set jump in the stanza")
                    return []
                }
                specs = [hop]
                fromFile = true
            }
        }
        var seen = attribute == "ssh_config" ? [sshConfigAlias ?? ""] : []
        var hops = resolveHops(specs, template: template, configHome: configHome, attribute: attribute, seen: &seen)
        if hops.count > Self.maxJumpHops {
            error(attribute, "the route goes through \(hops.count) jump hosts; tunneld allows \(Self.maxJumpHops) at most")
        }
        pinJumpHostKeys(&hops)
        if sshConfigHost != nil && !(hops.isEmpty && values["jump"] == nil) {
            recordSSHConfig("jump", hops.isEmpty ? "none" : hops.map(\.login).joined(separator: ","), fromFile: fromFile, fromStanza: attribute != "ssh_config")
        }
        return hops
    }

    /// `jump_fingerprint`: a pinned host key per hop, first hop first; `-` leaves a hop to
    /// known_hosts. A pin replaces known_hosts for its hop, as `fingerprint` does for the server.
    private mutating func pinJumpHostKeys(_ hops: inout [Route]) {
        guard let value = values["jump_fingerprint"] else { return }
        guard value.words.count <= hops.count else {
            error("jump_fingerprint", "jump_fingerprint names \(value.words.count) keys for \(hops.count) jump host\(hops.count == 1 ? "" : "s"); give one per hop, first hop first (- for a hop checked by known_hosts)")
            return
        }
        for (index, word) in value.words.enumerated() where word != "-" {
            switch ValueParser.fingerprint(word) {
            case .success(let fingerprint): hops[index].fingerprint = fingerprint
            case .failure(let message): error("jump_fingerprint", "jump_fingerprint: \(message.text)")
            }
        }
    }

    /// Hops for `specs`, with the hops a hop's own ssh_config ProxyJump names before it.
    private mutating func resolveHops(_ specs: [String], template: Route, configHome: String, attribute: String, seen: inout [String]) -> [Route] {
        var hops: [Route] = []
        for spec in specs {
            guard let (user, host, port) = Self.serverAddress(spec) else {
                error(attribute, "jump host '\(spec)' is not [USER@]HOST[:PORT]; write e.g. jump = alice@bastion.example.org:22")
                continue
            }
            var hop = template
            hop.server = Endpoint(host: host, port: port ?? 22)
            hop.user = user ?? environment.userName
            if let (_, file) = sshConfigHost {
                guard !seen.contains(host) else {
                    error("ssh_config", "ssh_config's ProxyJump settings go round in a loop (\((seen + [host]).joined(separator: " -> "))); fix the ssh_config file")
                    return hops
                }
                guard seen.count < Self.maxJumpHops else { break }
                switch SSHConfigLookup.resolve(alias: host, file: file, home: configHome, ssh: environment.sshProgram) {
                case .failure(let message):
                    error("ssh_config", "ssh_config, jump host \(host): \(message.text)")
                    continue
                case .success(let config):
                    if let nested = config.value("proxyjump") {
                        seen.append(host)
                        hops += resolveHops(JumpHosts.list(nested), template: template, configHome: configHome, attribute: "ssh_config", seen: &seen)
                        seen.removeLast()
                    }
                    apply(config, to: &hop, alias: host, writtenUser: user, writtenPort: port, configHome: configHome)
                }
            }
            hops.append(hop)
        }
        return hops
    }

    /// What ssh -G says of a jump host alias, where the hop as written did not say it.
    private mutating func apply(_ config: SSHConfigHost, to hop: inout Route, alias: String, writtenUser: String?, writtenPort: UInt16?, configHome: String) {
        if let hostName = config.value("hostname") {
            if let checked = ValueParser.host(hostName) {
                hop.server.host = checked
            } else {
                error("ssh_config", "ssh_config gives HostName \(hostName) for jump host \(alias), which is not a host name or address; fix the ssh_config file")
            }
        }
        if writtenPort == nil, let port = config.value("port").flatMap(UInt16.init) { hop.server.port = port }
        if writtenUser == nil, let user = config.value("user") { hop.user = user }
        let host = hop.server.host, port = hop.server.port, user = hop.user
        if let files = config["identityfile"] {
            let paths = files.compactMap { sshConfigPath($0, home: configHome, host: host, port: port, user: user) }
                .filter { FileManager.default.fileExists(atPath: $0) }
            if !paths.isEmpty {
                checkIdentityFiles(paths)
                hop.identities = paths
            }
        }
        if let files = config["userknownhostsfile"] {
            let paths = files.flatMap { $0.split(separator: " ").map(String.init) }
                .compactMap { sshConfigPath($0, home: configHome, host: host, port: port, user: user) }
            if !paths.isEmpty { hop.knownHosts = paths }
        }
        if hop.addressFamily == .any, let family = Self.addressFamily(sshConfig: config) { hop.addressFamily = family }
        switch config.value("stricthostkeychecking")?.lowercased() {
        case "yes", "true": hop.hostKeyPolicy = .strict
        case "accept-new", "no", "off", "false": hop.hostKeyPolicy = .acceptNew
        default: break
        }
    }
}
