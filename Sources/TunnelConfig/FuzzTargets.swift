/// Entry points for the fuzzers (`.ci/sanitizers fuzz`): each takes arbitrary bytes the way
/// tunneld takes a file, and must neither crash nor hang on any of them.
public enum FuzzTargets {
    /// A stanza file: lexed, parsed, and every service built, as the loader does (includes
    /// are not followed: a fuzzer must not read the machine's files).
    public static func stanzas(_ bytes: [UInt8]) {
        guard bytes.count < 1 << 20, let text = String(validating: bytes, as: UTF8.self) else { return }
        let parsed = Parser.parse(text, file: "fuzz")
        let environment = ConfigurationLoader.Environment(userName: "fuzz", homeDirectory: "/nonexistent", agentSocket: nil,
                                                          servicesFile: "/nonexistent", passwordFile: "/nonexistent",
                                                          // ssh_config must not start processes while fuzzing.
                                                          sshProgram: "/nonexistent")
        let names = ServiceNames(path: "/nonexistent")
        var defaults = AttributeValues()
        for case .defaults(let assignments, _) in parsed.items {
            for assignment in assignments { _ = defaults.apply(assignment, file: "fuzz") }
        }
        for case .service(let name, let assignments, let line) in parsed.items {
            var values = defaults
            for assignment in assignments { _ = values.apply(assignment, file: "fuzz") }
            var builder = ServiceBuilder(name: name, location: SourceLocation(file: "fuzz", line: line), values: values, environment: environment, names: names)
            if case .built(let service) = builder.build() { _ = CheckReport.options(of: service) }
        }
    }

    /// A known_hosts file, and a lookup in it.
    public static func knownHosts(_ bytes: [UInt8]) {
        let hosts = KnownHosts(entries: KnownHosts.parse(bytes, file: "fuzz"), hasher: { salt, name in Array((salt + name).prefix(20)) })
        let known = hosts.keys(forHost: "bastion.example.org", port: 2222)
        _ = KnownHosts.verdict(keyType: "ssh-ed25519", key: [1, 2, 3], known: known)
    }

    /// `permit` patterns (the words of the first line) and the hosts a SOCKS client may name
    /// (each further line): every pattern parsed, every host checked as a name and against
    /// every rule.
    public static func permits(_ bytes: [UInt8]) {
        guard bytes.count < 1 << 16, let text = String(validating: bytes, as: UTF8.self) else { return }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let rules = (lines.first ?? "").split(separator: " ").compactMap { PermitRule(String($0)) }
        for host in lines.dropFirst() {
            _ = HostSyntax.isHostName(host)
            if let literal = HostSyntax.bytes(of: host) { _ = HostSyntax.text(of: literal) }
            for rule in rules {
                _ = rule.allows(host: host, port: 443)
                _ = rule.mixesAddressAndName
                _ = rule.description
            }
        }
    }
}
