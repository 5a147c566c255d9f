import Foundation
import Glibc
import Logging
import TunnelConfig

/// How a connection ended, as the `result` field of its log line says it.
enum ConnectionOutcome: CustomStringConvertible {
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
    /// A limit (`instances`, `per_source`, `cps`) turned the client away.
    case limit(String)
    /// `only_from` / `no_access` turned the client away.
    case access(String)

    var description: String {
        switch self {
        case .ok: return "ok"
        case .refused(let reason): return "refused: \(reason)"
        case .sshFailed(let reason): return "ssh-failed: \(reason)"
        case .clientError(let reason): return "client-error: \(reason)"
        case .shutdown: return "shutdown"
        case .limit(let which): return "limit: \(which)"
        case .access(let rule): return "access: \(rule)"
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
        case .limit(let which): return "limit: \(which)"
        case .access: return "access"
        }
    }
}

extension Connection {
    /// Closes the client and writes the connection's one log line.
    func finish(_ outcome: ConnectionOutcome, logger: Logger) {
        client.close()
        let seconds = (ContinuousClock.now - acceptedAt).seconds
        stats.connectionEnded(outcome, bytesUp: bytesUp, bytesDown: bytesDown)
        logger.log(level: outcome.isSuccess ? .info : .warning, "connection closed", metadata: [
            "service": "\(service.name)",
            "peer": "\(peer)",
            "target": "\(service.target)",
            "via": "\(service.user)@\(service.server)",
            "duration": "\(seconds.threeDecimals)",
            "bytes.up": "\(bytesUp)",
            "bytes.down": "\(bytesDown)",
            "result": "\(outcome)",
        ])
        onFinish?(outcome)
        onFinish = nil
    }
}
