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

    var description: String {
        switch self {
        case .ok: return "ok"
        case .refused(let reason): return "refused: \(reason)"
        case .sshFailed(let reason): return "ssh-failed: \(reason)"
        case .clientError(let reason): return "client-error: \(reason)"
        case .shutdown: return "shutdown"
        }
    }

    var isSuccess: Bool {
        if case .ok = self { return true }
        return false
    }
}

extension Connection {
    /// Closes the client and writes the connection's one log line.
    func finish(_ outcome: ConnectionOutcome, logger: Logger) {
        Glibc.close(client)
        let duration = ContinuousClock.now - acceptedAt
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        logger.log(level: outcome.isSuccess ? .info : .warning, "connection closed", metadata: [
            "service": "\(service.name)",
            "peer": "\(peer)",
            "target": "\(service.target)",
            "via": "\(service.user)@\(service.server)",
            "duration": "\(String(format: "%.3f", seconds))",
            "bytes.up": "\(bytesUp)",
            "bytes.down": "\(bytesDown)",
            "result": "\(outcome)",
        ])
    }
}

import Foundation
import Glibc
