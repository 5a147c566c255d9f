import Foundation

/// The counters of one service that `tunneld status` shows. Updated from the listener and
/// the session loops, so every access takes the lock.
final class ServiceStats {
    struct Snapshot {
        var live = 0
        var total = 0
        var bytesUp = 0
        var bytesDown = 0
        var refusals: [String: Int] = [:]
        var lastError: String?
        var lastErrorAt: Date?
    }

    private let lock = NSLock()
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
        if !outcome.isSuccess {
            counters.lastError = "\(outcome)"
            counters.lastErrorAt = Date()
        }
    }

    var snapshot: Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return counters
    }
}
