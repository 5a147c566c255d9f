
/// How a connection ended, as the `result` field of its log line says it.
enum ConnectionOutcome: CustomStringConvertible, Sendable {
    /// Both directions finished cleanly.
    case ok
    /// The SSH server refused the channel (e.g. `administratively prohibited`).
    case refused(String)
    /// No session could carry the connection.
    case sshFailed(String)
    /// The client's socket failed.
    case clientError(String)
    /// The daemon stopped before the connection finished.
    case shutdown
    /// A limit turned the client away.
    case limit(ConnectionLimit)
    /// `only_from` / `no_access` turned the client away.
    case access(String)

    var description: String {
        switch self {
        case .ok: return "ok"
        case .refused(let reason): return "refused: \(reason)"
        case .sshFailed(let reason): return "ssh-failed: \(reason)"
        case .clientError(let reason): return "client-error: \(reason)"
        case .shutdown: return "shutdown"
        case .limit(let which): return "limit: \(which.rawValue)"
        case .access(let rule): return "access: \(rule)"
        }
    }

    /// The result's first word, as metrics label it: `ok`, `refused`, `ssh-failed`, `limit`,
    /// `access`, `client-error`, `shutdown`.
    var resultKind: String {
        switch self {
        case .ok: return "ok"
        case .refused: return "refused"
        case .sshFailed: return "ssh-failed"
        case .clientError: return "client-error"
        case .shutdown: return "shutdown"
        case .limit: return "limit"
        case .access: return "access"
        }
    }

    /// Whether a stream that was flowing ended this way without its end: the session failed
    /// or tunneld stopped. (A client's own failure, and a clean end, are not cuts.)
    var isCut: Bool {
        switch self {
        case .sshFailed, .shutdown: return true
        case .ok, .refused, .clientError, .limit, .access: return false
        }
    }

    var isSuccess: Bool {
        if case .ok = self { return true }
        return false
    }

    /// The key under which status counts this outcome as a refusal, if it is one.
    var refusalKind: String? {
        switch self {
        case .ok, .shutdown, .clientError: return nil
        case .refused(let reason): return "refused: \(reason)"
        case .sshFailed: return "ssh-failed"
        case .limit(let which): return "limit: \(which.rawValue)"
        case .access: return "access"
        }
    }
}

/// The limits that turn a client away before any SSH work, named as in the stanza.
enum ConnectionLimit: String, Sendable {
    case instances
    case perSource = "per_source"
    case cps
    /// The daemon-wide bound (`max_connections` in `defaults`).
    case maxConnections = "max_connections"
}
