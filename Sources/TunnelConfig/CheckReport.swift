/// Renders what `tunneld --check` prints: every diagnostic, the skipped files, then a table
/// of the services that would run, then `configuration OK` when there is no error. Control
/// characters in messages are escaped, so a configuration cannot drive the terminal.
public struct CheckReport: Sendable {
    public var configuration: Configuration

    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// The full report; ends with a newline.
    public func render() -> String {
        var lines = configuration.diagnostics.map(\.description)
        for file in configuration.skippedFiles {
            lines.append("skipped: \(file) (not a regular file, or a backup or package leftover by its name)")
        }
        for (name, location) in configuration.disabledServices {
            lines.append("disabled: \(name) (\(location), disable = yes)")
        }
        let services = configuration.services
        lines.append("")
        lines.append(services.count == 1 ? "1 service would run:" : "\(services.count) services would run\(services.isEmpty ? "." : ":")")
        if !services.isEmpty {
            var rows = [["SERVICE", "LISTEN", "VIA", "TARGET", "OPTIONS"]]
            for service in services {
                rows.append([
                    service.name, "\(service.listen)", service.route.chain, service.isSocks ? "(SOCKS5)" : "\(service.target)",
                    Self.options(of: service).joined(separator: " "),
                ])
            }
            let widths = (0..<5).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                let cells = row.enumerated().map { index, cell in
                    index == row.count - 1 ? cell : cell.padded(to: widths[index])
                }
                var line = cells.joined(separator: "  ")
                while line.hasSuffix(" ") { line.removeLast() }
                lines.append(line)
            }
            // The files each service will read, resolved (`~`, defaults, run_as's home).
            lines.append("")
            if let account = configuration.globals.runAs { lines.append("keys and known_hosts are read as \(account) (run_as):") }
            for service in services {
                let agent = service.identityAgent.map { "agent \($0); " } ?? ""
                let password = service.passwordFile.map { "; password_file \($0)" } ?? ""
                lines.append("\(service.name): \(agent)identity \(service.identities.joined(separator: " "))\(password); known_hosts \(service.knownHosts.joined(separator: " "))")
                for hop in service.route.jump {
                    lines.append("\(service.name): jump host \(hop.login): identity \(hop.identities.joined(separator: " ")); known_hosts \(hop.knownHosts.joined(separator: " "))\(hop.fingerprint.map { "; fingerprint \($0)" } ?? (hop.hostKeyPolicy == .strict ? "" : "; host_key \(hop.hostKeyPolicy.rawValue)"))")
                }
            }
            // Host aliases resolved by ssh -G, and where each setting came from.
            for service in services {
                guard let resolution = service.sshConfig else { continue }
                lines.append("")
                lines.append("\(service.name): server \(resolution.alias) resolved by ssh -G -F \(resolution.file):")
                for setting in resolution.settings {
                    lines.append("  \(setting.name) \(setting.value) (\(setting.source))")
                }
            }
        }
        let errors = configuration.diagnostics.filter { $0.severity == .error }.count
        let warnings = configuration.diagnostics.count - errors
        if errors == 0 {
            lines.append(warnings == 0 ? "configuration OK" : "configuration OK (\(warnings) warning\(warnings == 1 ? "" : "s"))")
        } else {
            lines.append("\(errors) error\(errors == 1 ? "" : "s"), \(warnings) warning\(warnings == 1 ? "" : "s"): services with errors will not run")
        }
        // Messages quote configuration words and file names, which may hold control characters.
        return lines.map { ControlCharacters.escaped($0) }.joined(separator: "\n") + "\n"
    }

    /// The settings of `service` that differ from the defaults, as `name=value`.
    static func options(of service: Service) -> [String] {
        var options: [String] = []
        for address in service.alsoListen { options.append("also=\(address)") }
        if !service.permit.isEmpty { options.append("permit(\(service.permit.count))") }
        if service.isPersistent { options.append("persistent") }
        if let probe = service.probeInterval { options.append("probe=\(probe.secondsText)") }
        if service.sessions != 4 || service.mostSessions != 4 + SessionPolicy.burstAllowance {
            options.append("sessions=\(service.sessions)" + (service.mostSessions != service.sessions + SessionPolicy.burstAllowance ? " (at most \(service.mostSessions))" : ""))
        }
        if service.linger != 30 { options.append("linger=\(service.linger.secondsText)") }
        if service.keepalive != Keepalive() { options.append("keepalive=\(service.keepalive.interval.secondsText)x\(service.keepalive.count)") }
        if service.connectTimeout != 10 { options.append("connect_timeout=\(service.connectTimeout.secondsText)") }
        if service.hostKeyPolicy != .strict { options.append("host_key=\(service.hostKeyPolicy.rawValue)") }
        if service.fingerprint != nil { options.append("fingerprint") }
        if let instances = service.instances { options.append("instances=\(instances)") }
        if let perSource = service.perSource { options.append("per_source=\(perSource)") }
        if let cps = service.cps { options.append("cps=\(cps.rate)/\(cps.pause.secondsText)") }
        if let onlyFrom = service.onlyFrom { options.append(onlyFrom.isEmpty ? "only_from(nobody)" : "only_from(\(onlyFrom.count))") }
        if !service.noAccess.isEmpty { options.append("no_access(\(service.noAccess.count))") }
        if service.refusal != .none { options.append("refusal=\(service.refusal.rawValue)") }
        switch service.logType {
        case .syslog(let facility, let level): options.append("log_type=syslog:\(facility.name).\(level.name)")
        case .file(let path, _, _): options.append("log_type=\(path)")
        case nil: break
        }
        return options
    }
}
