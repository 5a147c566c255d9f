import FoundationEssentials
import Glibc

/// Reads a configuration path (a file or a directory) into a `Configuration`.
///
/// A directory is read as every regular file in it, in name order, skipping names that start
/// with `.` or end in `~`, `.bak`, `.dpkg-*` or `.rpm*`. Files may `include` files and
/// `includedir` directories; loops (a file or directory that is being read, `includedir .`
/// among them) and depth beyond 8 are errors, and a file is read once however often it is
/// included. All `defaults` stanzas apply to every service, in the order read.
public struct ConfigurationLoader: Sendable {
    /// What the loader needs from the world outside the text: the account's home and name,
    /// the agent socket, and where /etc/services and /etc/passwd live. Tests pass their own.
    public struct Environment: Sendable {
        public var userName: String
        public var homeDirectory: String
        public var agentSocket: String?
        public var servicesFile: String
        public var passwordFile: String
        /// The group file, for `control_group`.
        public var groupFile: String
        /// Matches hashed known_hosts names when `--check` looks for a server's key.
        public var hostNameHasher: HostNameHasher?
        /// OpenSSH's ssh, which resolves Host aliases for `ssh_config` (`ssh -G`).
        public var sshProgram: String
        /// The home whose `~/.ssh/config` `ssh_config = yes` reads, and with which `~` in it is
        /// expanded: `$HOME` (Foundation ignores it for root), or run_as's home.
        public var sshConfigHome: String
        /// Whose configuration files are trusted: root's, and the account tunneld runs as.
        public var trust: PathTrust
        /// Whose key, passphrase and password files are trusted: besides `trust`, the
        /// `run_as` account that reads them after the switch.
        public var keyTrust: PathTrust

        public init(
            userName: String, homeDirectory: String, agentSocket: String?,
            servicesFile: String = "/etc/services", passwordFile: String = "/etc/passwd", groupFile: String = "/etc/group",
            hostNameHasher: HostNameHasher? = nil, sshProgram: String = "/usr/bin/ssh", sshConfigHome: String? = nil,
            trust: PathTrust = .current
        ) {
            self.trust = trust
            self.keyTrust = trust
            self.hostNameHasher = hostNameHasher
            self.sshProgram = sshProgram
            self.sshConfigHome = sshConfigHome ?? homeDirectory
            self.userName = userName
            self.homeDirectory = homeDirectory
            self.agentSocket = agentSocket
            self.servicesFile = servicesFile
            self.passwordFile = passwordFile
            self.groupFile = groupFile
        }

        /// The home directory of a local account, from the password file.
        public func homeDirectory(of account: String) -> String? {
            guard let data = FileManager.default.contents(atPath: passwordFile) else { return nil }
            for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                if fields.count >= 6, fields[0] == account { return String(fields[5]) }
            }
            return nil
        }

        /// The user id of a local account, from the password file.
        public func userID(of account: String) -> uid_t? {
            accounts().first { $0.name == account }?.uid
        }

        /// Every account of the password file: name, user id, primary group id.
        func accounts() -> [(name: String, uid: uid_t, gid: gid_t)] {
            guard let data = FileManager.default.contents(atPath: passwordFile) else { return [] }
            return String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line in
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                guard fields.count >= 6, let uid = uid_t(fields[2]), let gid = gid_t(fields[3]) else { return nil }
                return (String(fields[0]), uid, gid)
            }
        }

        /// The id of a local group, from the group file (a number is taken as it is).
        func groupID(of group: String) -> gid_t? {
            guard let data = FileManager.default.contents(atPath: groupFile) else { return nil }
            for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                if fields.count >= 3, fields[0] == group { return gid_t(fields[2]) }
            }
            return nil
        }
    }

    /// The most bytes read from one file; a configuration is never this large.
    static let maximumFileSize = 1 << 20
    /// How deep `include` may nest.
    static let maximumIncludeDepth = 8

    public var environment: Environment

    public init(environment: Environment) {
        self.environment = environment
    }

    /// Loads `path`. Never throws: every problem becomes a located diagnostic.
    public func load(path: String) -> Configuration {
        var reader = Reader(trust: environment.trust)
        reader.read(path: path, from: nil, depth: 0)
        return assemble(reader)
    }

    /// Collects items from files, following includes.
    private struct Reader {
        /// Whose files and directories may be read.
        let trust: PathTrust
        var items: [(item: Item, file: String)] = []
        var diagnostics: [Diagnostic] = []
        var skipped: [String] = []
        /// Canonical paths of the files and directories being read, outermost first.
        var visiting: [String] = []
        /// Canonical paths of every file read so far.
        var alreadyRead: Set<String> = []

        mutating func read(path: String, from place: SourceLocation?, depth: Int) {
            var isDirectory = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                diagnostics.append(Diagnostic(.error, at: place, "\(path) does not exist; give a configuration file or directory"))
                return
            }
            if isDirectory {
                readDirectory(path, from: place, depth: depth)
            } else {
                readFile(path, from: place, depth: depth)
            }
        }

        mutating func readDirectory(_ path: String, from place: SourceLocation?, depth: Int, as written: String? = nil) {
            let canonical = PathText.canonical(path)
            guard !visiting.contains(canonical) else {
                diagnostics.append(Diagnostic(.error, at: place, "includedir \(written ?? path) includes \(canonical), which is already being read (a loop); remove the includedir"))
                return
            }
            if let problem = trust.problem(with: path) {
                diagnostics.append(Diagnostic(.error, at: place, problem, refusesFile: true))
                return
            }
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else {
                diagnostics.append(Diagnostic(.error, at: place, "cannot read the directory \(path); check its permissions"))
                return
            }
            visiting.append(canonical)
            defer { visiting.removeLast() }
            for name in names.sorted() {
                let full = PathText.joined(path, name)
                if ConfigurationLoader.isSkipped(name) {
                    skipped.append(full)
                    continue
                }
                var isDirectory = false
                guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory else {
                    skipped.append(full)
                    continue
                }
                readFile(full, from: place, depth: depth)
            }
        }

        mutating func readFile(_ path: String, from place: SourceLocation?, depth: Int) {
            let canonical = PathText.canonical(path)
            guard !visiting.contains(canonical) else {
                diagnostics.append(Diagnostic(.error, at: place, "\(path) includes itself (through \(visiting.last ?? path)); remove the include"))
                return
            }
            guard !alreadyRead.contains(canonical) else {
                diagnostics.append(Diagnostic(.warning, at: place, "\(path) was already read; included once only"))
                return
            }
            guard depth <= ConfigurationLoader.maximumIncludeDepth else {
                diagnostics.append(Diagnostic(.error, at: place, "includes nest deeper than \(ConfigurationLoader.maximumIncludeDepth) files at \(path); flatten them"))
                return
            }
            alreadyRead.insert(canonical)
            if let problem = trust.problem(with: path) {
                diagnostics.append(Diagnostic(.error, at: place, problem, refusesFile: true))
                return
            }
            guard let data = FilePrefix.read(path, atMost: ConfigurationLoader.maximumFileSize + 1) else {
                diagnostics.append(Diagnostic(.error, at: place, "cannot read \(path); check its permissions"))
                return
            }
            guard data.count <= ConfigurationLoader.maximumFileSize else {
                diagnostics.append(Diagnostic(.error, at: SourceLocation(file: path, line: 1), "\(path) is larger than 1 MiB; is it a configuration file?"))
                return
            }
            if data.contains(0) {
                diagnostics.append(Diagnostic(.error, at: SourceLocation(file: path, line: 1), "\(path) holds binary data (a NUL byte); is it a configuration file?"))
                return
            }
            guard let text = String(bytes: data, encoding: .utf8) else {
                diagnostics.append(Diagnostic(.error, at: SourceLocation(file: path, line: 1), "\(path) is not UTF-8 text"))
                return
            }
            visiting.append(canonical)
            defer { visiting.removeLast() }
            let parsed = Parser.parse(text, file: path)
            diagnostics += parsed.diagnostics
            for item in parsed.items {
                switch item {
                case .include(let target, let line):
                    read(path: resolve(target, relativeTo: path), from: SourceLocation(file: path, line: line), depth: depth + 1)
                case .includeDirectory(let target, let line):
                    let directory = resolve(target, relativeTo: path)
                    var isDirectory = false
                    if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory {
                        readDirectory(directory, from: SourceLocation(file: path, line: line), depth: depth + 1, as: target)
                    } else {
                        diagnostics.append(Diagnostic(.error, at: SourceLocation(file: path, line: line), "includedir \(target): no such directory"))
                    }
                default:
                    items.append((item, path))
                }
            }
        }

        private func resolve(_ target: String, relativeTo file: String) -> String {
            target.hasPrefix("/") ? target : PathText.joined(PathText.parent(of: file), target)
        }
    }

    /// Whether a directory entry is skipped by its name.
    static func isSkipped(_ name: String) -> Bool {
        name.hasPrefix(".") || name.hasSuffix("~") || name.hasSuffix(".bak") || name.contains(".dpkg-")
            || name.hasSuffix(".rpmnew") || name.hasSuffix(".rpmsave") || name.hasSuffix(".rpmorig")
    }

    private func assemble(_ reader: Reader) -> Configuration {
        var configuration = Configuration(diagnostics: reader.diagnostics, skippedFiles: reader.skipped)
        let names = ServiceNames(path: environment.servicesFile)

        // Defaults first, in the order read; they apply to every service wherever it is.
        var defaults = AttributeValues()
        var globals = AttributeValues()
        for (item, file) in reader.items {
            guard case .defaults(let assignments, _) = item else { continue }
            for assignment in assignments {
                if AttributeTable.global[assignment.name] != nil {
                    _ = globals.apply(assignment, file: file)
                } else if let problem = defaults.apply(assignment, file: file) {
                    configuration.diagnostics.append(Diagnostic(.error, at: SourceLocation(file: file, line: assignment.line), problem))
                }
            }
        }
        configuration.globals = resolveGlobals(globals, diagnostics: &configuration.diagnostics)
        if configuration.globals.metrics != nil {
            configuration.globals.metricsOnlyFrom = (defaults["only_from"]?.words ?? []).compactMap { word in
                if case .success(let match) = ValueParser.addressMatch(word) { return match }
                return nil
            }
        }
        // The defaults' log_type is also where lines that name no service go; its errors are
        // reported by each service that inherits it.
        configuration.globals.logType = defaults["log_type"].flatMap { try? LogType.parse($0.words).get() }
        // With run_as, the daemon reads keys and known_hosts as that account, after dropping
        // root: `~` and the default files are that account's, and root's agent is not used.
        var serviceEnvironment = environment
        if let account = configuration.globals.runAs, let home = environment.homeDirectory(of: account) {
            serviceEnvironment.userName = account
            serviceEnvironment.homeDirectory = home
            serviceEnvironment.sshConfigHome = home
            serviceEnvironment.agentSocket = nil
            if let uid = environment.userID(of: account) {
                serviceEnvironment.keyTrust.owners.insert(uid)
            }
        }

        var seen: [String: SourceLocation] = [:]
        var listening: [Endpoint: String] = [:]
        for (item, file) in reader.items {
            guard case .service(let name, let assignments, let line) = item else { continue }
            let location = SourceLocation(file: file, line: line)
            if let first = seen[name] {
                configuration.diagnostics.append(Diagnostic(.error, at: location, service: name, "a service named \(name) is already defined at \(first); rename one of them"))
                continue
            }
            seen[name] = location
            var values = defaults
            var broken = false
            for assignment in assignments {
                if let problem = values.apply(assignment, file: file) {
                    configuration.diagnostics.append(Diagnostic(.error, at: SourceLocation(file: file, line: assignment.line), service: name, problem))
                    broken = true
                }
            }
            // A disabled stanza is checked for grammar only: what it would mean (a key that
            // does not exist yet, say) must not block a reload of the others.
            if let disable = values["disable"], disable.words.count == 1, ValueParser.flag(disable.words[0]) == .success(true) {
                if !broken { configuration.disabledServices.append((name, location)) }
                continue
            }
            var builder = ServiceBuilder(name: name, location: location, values: values, environment: serviceEnvironment, names: names)
            let result = builder.build()
            configuration.diagnostics += builder.diagnostics
            switch result {
            case .built(let service) where !broken:
                if let (address, other) = service.listenAddresses.lazy.compactMap({ address in listening[address].map { (address, $0) } }).first {
                    configuration.diagnostics.append(Diagnostic(.error, at: location, service: name, "listens on \(address) like service \(other); give one of them another port"))
                    continue
                }
                for address in service.listenAddresses { listening[address] = name }
                configuration.services.append(service)
            default:
                break
            }
        }
        return configuration
    }

    private func resolveGlobals(_ values: AttributeValues, diagnostics: inout [Diagnostic]) -> GlobalSettings {
        var settings = GlobalSettings()
        func place(_ name: String) -> SourceLocation? {
            values[name].map { SourceLocation(file: $0.file, line: $0.line) }
        }
        func one(_ name: String) -> String? {
            guard let value = values[name] else { return nil }
            guard value.words.count == 1 else {
                diagnostics.append(Diagnostic(.error, at: place(name), "\(name) takes one value"))
                return nil
            }
            return value.words[0]
        }
        settings.controlSocket = one("control_socket")
        if let account = one("run_as") {
            if environment.homeDirectory(of: account) == nil {
                diagnostics.append(Diagnostic(.error, at: place("run_as"), "run_as \(account) is not an account on this machine; create it (adduser --system --group \(account)) or fix the name"))
            } else {
                settings.runAs = account
            }
        }
        let controlGroup = one("control_group")
        resolveControlGroup(&settings, named: controlGroup, place: place, diagnostics: &diagnostics)
        if let level = one("log_level") {
            let known = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            if known.contains(level.lowercased()) {
                settings.logLevel = level.lowercased()
            } else {
                diagnostics.append(Diagnostic(.error, at: place("log_level"), "log_level \(level) is not one of \(known.joined(separator: ", "))"))
            }
        }
        let metricsText = one("metrics")
        if let text = metricsText, text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            if path.hasPrefix("/") {
                settings.metricsSocket = path
            } else {
                diagnostics.append(Diagnostic(.error, at: place("metrics"), "metrics '\(text)' needs an absolute path after unix:; write e.g. metrics = unix:/run/tunneld/metrics.sock"))
            }
        } else if let text = metricsText {
            var host = "127.0.0.1"
            var portText = Substring(text)
            if let colon = text.lastIndex(of: ":") {
                let isBracket: (Character) -> Bool = { $0 == "[" || $0 == "]" }
                host = String(text[..<colon].drop(while: isBracket).reversed().drop(while: isBracket).reversed())
                portText = text[text.index(after: colon)...]
            }
            if let port = UInt16(portText), port > 0, let listen = ServiceBuilder.listenHost(host) {
                settings.metrics = Endpoint(host: listen, port: port)
            } else {
                diagnostics.append(Diagnostic(.error, at: place("metrics"), "metrics '\(text)' is not [HOST:]PORT or unix:PATH; write e.g. metrics = 127.0.0.1:9108"))
            }
        }
        if let text = one("max_connections") {
            switch ValueParser.limit(text) {
            case .success(let count): settings.maxConnections = count
            case .failure(let message): diagnostics.append(Diagnostic(.error, at: place("max_connections"), "max_connections: \(message)"))
            }
        }
        if let text = one("shutdown_timeout") {
            switch ValueParser.seconds(text, atMost: .hour) {
            case .success(let seconds): settings.shutdownTimeout = seconds
            case .failure(let message): diagnostics.append(Diagnostic(.error, at: place("shutdown_timeout"), "shutdown_timeout: \(message)"))
            }
        }
        return settings
    }
}

extension ConfigurationLoader {
    /// The group that gets the control socket (mode 0660): `control_group`, else run_as's
    /// primary group; none (mode 0600, root's alone) when other accounts have that group as
    /// their primary group (`nogroup`, `users`), since they could then ask for status and
    /// reconnect: that is an error naming the fixes.
    private func resolveControlGroup(
        _ settings: inout GlobalSettings, named controlGroup: String?, place: (String) -> SourceLocation?, diagnostics: inout [Diagnostic]
    ) {
        let accounts = environment.accounts()
        var group: gid_t?
        var location = place("run_as")
        if let name = controlGroup {
            location = place("control_group")
            guard let gid = environment.groupID(of: name) else {
                diagnostics.append(Diagnostic(.error, at: location, "control_group \(name) is not a group on this machine; create it (addgroup --system \(name)) or fix the name"))
                return
            }
            group = gid
        } else if let account = settings.runAs {
            group = accounts.first { $0.name == account }?.gid
        }
        guard let group else { return }
        let sharing = accounts.filter { $0.gid == group && $0.name != settings.runAs }.map(\.name)
        guard sharing.isEmpty else {
            let groupName = groupName(of: group)
            let who = sharing.prefix(3).joined(separator: ", ") + (sharing.count > 3 ? " and \(sharing.count - 3) more" : "")
            let account = settings.runAs ?? "tunneld"
            diagnostics.append(Diagnostic(.error, at: location, "the control socket's group \(groupName) is the primary group of \(who) too, who could then run tunneld status and reconnect; the socket stays root's alone (mode 0600): give run_as a group of its own (adduser --system --group \(account)) or set control_group = GROUP in defaults to a group of its own"))
            return
        }
        settings.controlGroup = group
    }

    private func groupName(of gid: gid_t) -> String {
        guard let data = FileManager.default.contents(atPath: environment.groupFile) else { return "\(gid)" }
        for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count >= 3, gid_t(fields[2]) == gid { return String(fields[0]) }
        }
        return "\(gid)"
    }
}

extension ConfigurationLoader.Environment {
    /// The login name of the account this process runs as (its passwd entry), or "".
    private static var accountName: String {
        getpwuid(geteuid()).map { String(cString: $0.pointee.pw_name) } ?? ""
    }

    /// The environment of the account this process runs as.
    public static var current: Self {
        let env = ProcessInfo.processInfo.environment
        let home = env["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil }
        return Self(userName: env["USER"] ?? accountName, homeDirectory: FileManager.default.homeDirectoryForCurrentUser.path, agentSocket: env["SSH_AUTH_SOCK"], sshConfigHome: home)
    }
}
