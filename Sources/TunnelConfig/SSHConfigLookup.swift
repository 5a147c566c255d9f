import FoundationEssentials
import Glibc
import Platform

/// What OpenSSH's own resolver (`ssh -G`) says about a Host alias: only the settings the
/// ssh_config file gave, not ssh's defaults. Pure lookup: ssh makes no connection.
struct SSHConfigHost: Equatable {
    /// ssh -G's lower-cased keyword → its values (several lines for `identityfile`), for each
    /// keyword whose value differs from what ssh says with no config file at all.
    var settings: [String: [String]]

    subscript(keyword: String) -> [String]? { settings[keyword] }

    /// The one value of `keyword`, if the file set it.
    func value(_ keyword: String) -> String? { settings[keyword]?.first }
}

enum SSHConfigLookup {
    /// The most time `ssh -G` may take.
    static let timeout: Double = 5

    /// Resolves `alias` with `ssh -G -F file`, compared with `ssh -G -F /dev/null` so that
    /// ssh's defaults are left out. `home` replaces the account's passwd home, with which ssh
    /// expands `~` in some values. Fails with a sentence saying what went wrong.
    static func resolve(alias: String, file: String, home: String, ssh: String) -> Result<SSHConfigHost, Message> {
        guard FileManager.default.isExecutableFile(atPath: ssh) else {
            return .failure("ssh_config needs OpenSSH's ssh (\(ssh)) to resolve \(alias), and it is not there; install openssh-client or remove ssh_config")
        }
        let configured: [String: [String]]
        let defaults: [String: [String]]
        switch run(ssh, ["-G", "-F", file, "--", alias], home: home) {
        case .failure(let message): return .failure(message)
        case .success(let output): configured = parse(output)
        }
        switch run(ssh, ["-G", "-F", "/dev/null", "--", alias], home: home) {
        case .failure(let message): return .failure(message)
        case .success(let output): defaults = parse(output)
        }
        var settings = configured.filter { defaults[$0.key] != $0.value }
        let passwdHome = getpwuid(geteuid()).map { String(cString: $0.pointee.pw_dir) }
        if let passwdHome, passwdHome != home, let files = settings["userknownhostsfile"] {
            settings["userknownhostsfile"] = files.map { $0.hasPrefix(passwdHome + "/") ? home + $0.dropFirst(passwdHome.count) : $0 }
        }
        return .success(SSHConfigHost(settings: settings))
    }

    /// `keyword value…` lines → keyword → values, one entry per line (space-joined).
    static func parse(_ output: String) -> [String: [String]] {
        var settings: [String: [String]] = [:]
        for line in output.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { continue }
            settings[parts[0].lowercased(), default: []].append(String(parts[1]))
        }
        return settings
    }

    /// Runs ssh with `HOME` set to `home`, stdin from /dev/null, bounded by `timeout`.
    private static func run(_ ssh: String, _ arguments: [String], home: String) -> Result<String, Message> {
        var environment = ProcessInfo.processInfo.environment
        environment["HOME"] = home
        switch ChildProgram.run(ssh, arguments, environment: environment, timeout: timeout) {
        case .failure(.cannotStart(let reason)):
            return .failure("cannot run \(ssh) -G: \(reason)")
        case .failure(.timedOut):
            return .failure("\(ssh) \(arguments.joined(separator: " ")) took over \(Int(timeout)) s; check the ssh_config file (Match exec?)")
        case .success(let exit):
            let stderr = String(decoding: exit.errors, as: UTF8.self)
            guard exit.status == 0 else {
                let reason = stderr.split(whereSeparator: \.isNewline).filter { !$0.hasPrefix("Pseudo-terminal") }.joined(separator: "; ")
                return .failure("\(ssh) -G failed: \(reason.isEmpty ? "exit status \(exit.status)" : reason)")
            }
            return .success(String(decoding: exit.output, as: UTF8.self))
        }
    }
}
