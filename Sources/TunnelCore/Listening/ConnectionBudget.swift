import Glibc
import Synchronization

/// The daemon-wide bound on live connections, over all services: past it a client is turned
/// away at once (`limit: max_connections`) instead of running the process out of descriptors,
/// which would also stop accepting, the control socket and new sessions.
final class ConnectionBudget: Sendable {
    /// Descriptors kept for listeners, sessions, the control socket and the log.
    static let reserve = 128

    let limit: Int
    private let live = Atomic<Int>(0)

    /// - `limit`: the configured `max_connections`, or nil for the descriptor limit less the reserve.
    init(limit: Int?) {
        self.limit = limit ?? Self.descriptorBudget()
    }

    /// Takes a slot for a new connection; false when the daemon is full.
    func take() -> Bool {
        let now = live.add(1, ordering: .relaxed).newValue
        if now <= limit { return true }
        live.subtract(1, ordering: .relaxed)
        return false
    }

    /// Gives back a finished connection's slot.
    func release() {
        live.subtract(1, ordering: .relaxed)
    }

    /// Live connections now.
    var count: Int { live.load(ordering: .relaxed) }

    /// The soft descriptor limit less the reserve, at least 16.
    static func descriptorBudget() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int32.max) else { return 1 << 20 }
        return max(16, Int(clamping: limit.rlim_cur) - reserve)
    }
}
