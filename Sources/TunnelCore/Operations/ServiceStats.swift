import FoundationEssentials
import Platform
import TunnelConfig

/// The counters of one service that `tunneld status` shows. Updated from the listener and
/// the session loops, so every access takes the lock.
final class ServiceStats: @unchecked Sendable {
    struct Snapshot {
        var live = 0
        var total = 0
        var bytesUp = 0
        var bytesDown = 0
        var refusals: [String: Int] = [:]
        /// Ended connections by the first word of their result (`ok`, `refused`, `ssh-failed`, ...).
        var results: [String: Int] = [:]
        var lastError: String?
        var lastErrorAt: Date?
        /// Seconds from accepting a client to its channel being open.
        var openLatency = Histogram()
    }

    private let lock = Lock()
    private var counters = Snapshot()

    /// A client was accepted.
    func connectionStarted() {
        lock.lock()
        counters.live += 1
        counters.total += 1
        lock.unlock()
    }

    /// A client's connection ended (accepted ones only) with `outcome`.
    func connectionEnded(_ outcome: ConnectionOutcome, bytesUp: Int, bytesDown: Int) {
        lock.lock()
        defer { lock.unlock() }
        counters.live -= 1
        counters.bytesUp += bytesUp
        counters.bytesDown += bytesDown
        if let kind = outcome.refusalKind {
            counters.refusals[kind, default: 0] += 1
        }
        counters.results[outcome.resultKind, default: 0] += 1
        if !outcome.isSuccess {
            counters.lastError = "\(outcome)"
            counters.lastErrorAt = Date()
        }
    }

    /// A client's channel opened `seconds` after it was accepted.
    func channelOpened(after seconds: Double) {
        lock.lock()
        counters.openLatency.record(seconds)
        lock.unlock()
    }

    var snapshot: Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return counters
    }
}

/// Counts of observations at or below each bound, as a Prometheus histogram has them.
struct Histogram: Equatable, Codable, Sendable {
    /// Upper bounds in seconds: from a warm open on a LAN to a cold session far away.
    static let bounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    /// Cumulative counts, one per bound.
    var buckets = [Int](repeating: 0, count: Histogram.bounds.count)
    var count = 0
    var sum = 0.0

    mutating func record(_ value: Double) {
        for (index, bound) in Self.bounds.enumerated() where value <= bound { buckets[index] += 1 }
        count += 1
        sum += value
    }
}
