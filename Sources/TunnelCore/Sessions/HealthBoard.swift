import FoundationEssentials
import Platform
import TunnelConfig

/// One service's health probe (`probe = interval`): a channel opened to its target and
/// closed at once, on the persistent session, so that a target that is down shows in
/// `tunneld status` before a client finds out.
struct HealthCheck: Equatable, Sendable {
    var service: String
    var target: Endpoint
    var interval: Double
}

/// The last probe result of each probed service: written by the persistent session's event
/// loop, read by `tunneld status`.
final class HealthBoard: Sendable {
    struct Result: Equatable, Sendable {
        /// Whether the channel opened.
        var isUp: Bool
        /// `ok`, or why not (`refused: connect failed`, ...).
        var detail: String
        var at: Date
    }

    private let results = Locked<[String: Result]>([:])

    func record(service: String, isUp: Bool, detail: String) {
        results.withLock { $0[service] = Result(isUp: isUp, detail: detail, at: Date()) }
    }

    func result(for service: String) -> Result? {
        results.withLock { $0[service] }
    }
}
