/// Every attribute name tunneld knows, and how its values combine.
enum AttributeTable {
    enum Kind {
        /// One value (or a fixed short list, like `keepalive`); `=` only.
        case single
        /// A list: `=` replaces, `+=` appends, `-=` removes.
        case list
    }

    /// Service attributes (also allowed in `defaults`).
    static let service: [String: Kind] = [
        "port": .single, "bind": .single, "interface": .single, "server": .single, "user": .single,
        "server_args": .single, "jump": .list, "jump_fingerprint": .list, "ssh_config": .single, "identity": .list, "identity_passphrase_file": .single,
        "identity_agent": .single, "password_file": .single, "known_hosts": .list, "host_key": .single, "fingerprint": .single,
        "linger": .single, "persistent": .single, "sessions": .single, "probe": .single, "permit": .list, "keepalive": .single, "connect_timeout": .single,
        "instances": .single, "per_source": .single, "cps": .single, "only_from": .list,
        "no_access": .list, "disable": .single, "log_on_success": .list, "log_on_failure": .list,
        "refusal": .single, "log_type": .single,
    ]

    /// xinetd attributes that describe what tunneld does anyway, or that it checks for
    /// incompatible values (`socket_type`, `protocol`, `wait`).
    static let xinetdCompatible: [String: Kind] = [
        "type": .list, "socket_type": .single, "protocol": .single, "wait": .single,
        "groups": .single, "flags": .list, "id": .single,
    ]

    /// Settings of the daemon as a whole; `defaults` only.
    static let global: [String: Kind] = [
        "control_socket": .single, "control_group": .single, "run_as": .single, "log_level": .single, "shutdown_timeout": .single,
        "max_connections": .single, "metrics": .single,
    ]

    static let allNames: Set<String> = Set(service.keys).union(xinetdCompatible.keys).union(global.keys)

    static func kind(of name: String) -> Kind? {
        service[name] ?? xinetdCompatible[name] ?? global[name]
    }
}

/// The values of a stanza after `=`, `+=` and `-=` were applied, with where each was set.
struct AttributeValues {
    struct Value {
        var words: [String]
        var line: Int
        var file: String
    }

    private(set) var values: [String: Value] = [:]

    subscript(name: String) -> Value? { values[name] }

    var names: [String] { Array(values.keys) }

    /// Applies one assignment. Returns an error message when the operator does not fit.
    mutating func apply(_ assignment: Assignment, file: String) -> String? {
        let kind = AttributeTable.kind(of: assignment.name) ?? .list
        switch assignment.op {
        case .set:
            values[assignment.name] = Value(words: assignment.values, line: assignment.line, file: file)
        case .add:
            guard kind == .list else {
                return "\(assignment.name) takes one value; use = instead of +="
            }
            var value = values[assignment.name] ?? Value(words: [], line: assignment.line, file: file)
            value.words += assignment.values
            value.line = assignment.line
            value.file = file
            values[assignment.name] = value
        case .remove:
            guard kind == .list else {
                return "\(assignment.name) takes one value; -= works on lists only"
            }
            var value = values[assignment.name] ?? Value(words: [], line: assignment.line, file: file)
            value.words.removeAll { assignment.values.contains($0) }
            value.line = assignment.line
            value.file = file
            values[assignment.name] = value
        }
        return nil
    }
}
