/// What an xinetd command-form stanza (`server = /usr/bin/ssh`, `server_args = … host nc HOST PORT`)
/// means in tunneld's own terms.
struct XinetdCommand: Equatable {
    var host: String
    var port: UInt16?
    var user: String?
    var identities: [String] = []
    var target: Endpoint
    /// Jump hosts from `-J` or `-o ProxyJump=` (or a `-o ProxyCommand=ssh -W %h:%p HOST`),
    /// `[user@]host[:port]` each, first hop first; nil when none was given.
    var jumps: [String]?
    /// ssh options tunneld does not use, for a warning.
    var ignoredOptions: [String] = []

    /// Whether `server` names the ssh client rather than an SSH server.
    static func isSSHCommand(_ server: String) -> Bool {
        server.hasPrefix("/") && (server.hasSuffix("/ssh") || server.hasSuffix("/dbclient"))
            || server == "ssh"
    }

    private static let optionsWithArgument = Set("BbcDEeFIiJLlmOoPpQRSWw")
    private static let netcats: Set<String> = ["nc", "netcat", "ncat", "nc.openbsd", "nc.traditional"]

    /// Reads ssh's arguments. Returns a message saying what is missing when they do not
    /// describe a tunnel tunneld can make.
    static func parse(_ arguments: [String], names: ServiceNames) -> Result<XinetdCommand, Message> {
        var host: String?
        var port: UInt16?
        var user: String?
        var identities: [String] = []
        var forward: String?
        var jumps: [String]?
        var ignored: [String] = []
        var index = 0
        var command: [String] = []

        func option(_ name: Character, _ value: String) -> Message? {
            switch name {
            case "p":
                guard case .success(let number) = ValueParser.port(value, names: names) else { return "ssh -p \(value) is not a port" }
                port = number
            case "l": user = value
            case "i": identities.append(value)
            case "W": forward = value
            case "o":
                let pair = value.split(separator: "=", maxSplits: 1).map(String.init)
                let parts = pair.count == 2 ? pair : value.split(separator: " ", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { ignored.append("-o \(value)"); return nil }
                switch parts[0].lowercased() {
                case "port":
                    guard case .success(let number) = ValueParser.port(parts[1], names: names) else { return "ssh -o Port=\(parts[1]) is not a port" }
                    port = number
                case "user": user = parts[1]
                case "identityfile": identities.append(parts[1])
                case "proxyjump": jumps = JumpHosts.list(parts[1])
                case "proxycommand":
                    guard let host = JumpHosts.host(inProxyCommand: parts[1]) else {
                        return "ssh -o ProxyCommand=\(parts[1]) runs a program tunneld cannot; only ssh -W %h:%p HOST is understood (as a jump host): use -J HOST"
                    }
                    jumps = [host]
                default: ignored.append("-o \(value)")
                }
            case "J": jumps = JumpHosts.list(value)
            default:
                ignored.append("-\(name) \(value)")
            }
            return nil
        }

        while index < arguments.count {
            let word = arguments[index]
            index += 1
            if host != nil {
                command.append(word)
                continue
            }
            guard word.hasPrefix("-"), word.count > 1 else {
                host = word
                continue
            }
            var letters = Array(word.dropFirst())
            while !letters.isEmpty {
                let letter = letters.removeFirst()
                if optionsWithArgument.contains(letter) {
                    var value = String(letters)
                    letters.removeAll()
                    if value.isEmpty {
                        guard index < arguments.count else { return .failure("ssh option -\(letter) needs a value") }
                        value = arguments[index]
                        index += 1
                    }
                    if let problem = option(letter, value) { return .failure(problem) }
                } else if !"NTqnxaCkK46v".contains(letter) {
                    ignored.append("-\(letter)")
                }
            }
        }

        guard var destination = host else {
            return .failure("server_args names no host for ssh; write: server_args = [options] user@host nc HOST PORT")
        }
        if let at = destination.lastIndex(of: "@") {
            if user == nil { user = String(destination[..<at]) }
            destination = String(destination[destination.index(after: at)...])
        }
        guard let sshHost = ValueParser.host(destination) else {
            return .failure("'\(destination)' in server_args is not a host name or address")
        }

        let target: Endpoint
        if let forward {
            guard let colon = forward.lastIndex(of: ":"),
                  let targetHost = ValueParser.host(String(forward[..<colon])),
                  case .success(let targetPort) = ValueParser.port(String(forward[forward.index(after: colon)...]), names: names) else {
                return .failure("ssh -W \(forward) is not HOST:PORT")
            }
            target = Endpoint(host: targetHost, port: targetPort)
        } else {
            guard let program = command.first, netcats.contains(String(program.split(separator: "/").last ?? "")), command.count >= 3 else {
                return .failure("server_args must run netcat on the server (… host nc HOST PORT) or use -W HOST:PORT; tunneld cannot carry other commands")
            }
            let targetPortText = command[command.count - 1]
            guard let targetHost = ValueParser.host(command[command.count - 2]),
                  case .success(let targetPort) = ValueParser.port(targetPortText, names: names) else {
                return .failure("'\(command.suffix(2).joined(separator: " "))' after \(program) is not HOST PORT")
            }
            target = Endpoint(host: targetHost, port: targetPort)
        }
        return .success(XinetdCommand(host: sshHost, port: port, user: user, identities: identities, target: target, jumps: jumps, ignoredOptions: ignored))
    }
}
