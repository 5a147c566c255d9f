import Logging
import TunnelConfig

/// Which fields a service's `connection closed` line keeps, by xinetd's `log_on_success` and
/// `log_on_failure` names: `HOST` the peer, `DURATION` the duration, `TRAFFIC` the bytes each
/// way; `service`, `target`, `via` and `result` are always kept (xinetd always names the
/// service and, on failure, the reason: `ATTEMPT`); `PID`, `USERID` and `EXIT` have no
/// meaning for tunneld (no server process, no identd). An empty list means no line at all.
enum ConnectionLineFields {
    /// The message of the line these fields apply to.
    static let message = "connection closed"

    /// `metadata` with the fields `fields` does not ask for removed, or `nil` when the line is
    /// not to be written.
    static func select(_ metadata: Logger.Metadata, fields: LogFields) -> Logger.Metadata? {
        let isSuccess = metadata["result"].map { "\($0)" } == "ok"
        let chosen = isSuccess ? fields.onSuccess : fields.onFailure
        guard !chosen.isEmpty else { return nil }
        var kept = metadata
        if !chosen.contains("HOST") { kept["peer"] = nil }
        if !chosen.contains("DURATION") { kept["duration"] = nil }
        if !chosen.contains("TRAFFIC") {
            kept["bytes.up"] = nil
            kept["bytes.down"] = nil
        }
        return kept
    }
}
