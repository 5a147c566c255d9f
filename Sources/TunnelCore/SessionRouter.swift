/// Where a new client of a server goes, decided from what each of the server's sessions
/// reports: a pure function, so the rules are tested without sessions or threads.
enum SessionRouter {
    enum Route: Equatable {
        /// Hand the client to the session at this index.
        case session(Int)
        /// Start another session for the client.
        case startSession
        /// Close the client at once, with this reason.
        case refuse(String)
    }

    /// The rules, in order:
    /// 1. the least loaded session that is up, not suspect and not stuck on a channel open,
    ///    unless it carries `spreadThreshold` connections and another session may be started;
    /// 2. a session still connecting: at most one connect per server is under way;
    /// 3. within a second of a failed connect, refuse with its reason (offline fails fast);
    /// 4. a persistent session waiting out its backoff: it connects at once for the client;
    /// 5. a new session, if there is room or every session is suspect (the fresh session
    ///    races the old ones' probes);
    /// 6. the least loaded session, which serves the client in turn.
    /// - `avoiding`: the session the client is moving off (its open is stuck): chosen only
    ///   when no other can take the client.
    /// - `refusal`: the backoff's reason to refuse now, if any.
    static func route(_ gauges: [SessionSupervisor.Gauge], avoiding: Int? = nil, maxSessions: Int, refusal: String?, now: ContinuousClock.Instant) -> Route {
        let all = gauges.indices.filter { gauges[$0].phase != .retired }
        let live = all.filter { $0 != avoiding }
        let ready = live.filter { index in
            let gauge = gauges[index]
            let isStuck = gauge.busySince.map { now - $0 >= SessionSettings.stuckOpenBound } ?? false
            return gauge.phase == .up && !gauge.isSuspect && !isStuck
        }
        let leastLoadedReady = ready.min { gauges[$0].load < gauges[$1].load }
        let hasRoom = all.count < maxSessions
        if let best = leastLoadedReady, gauges[best].load < SessionSettings.spreadThreshold || !hasRoom || refusal != nil {
            return .session(best)
        }
        if let connecting = live.first(where: { gauges[$0].phase == .connecting }) {
            return .session(connecting)
        }
        if let refusal {
            return .refuse(refusal)
        }
        if let waiting = live.first(where: { gauges[$0].phase == .backingOff }) {
            return .session(waiting)
        }
        let allSuspect = !live.isEmpty && live.allSatisfy { gauges[$0].isSuspect }
        if hasRoom || allSuspect {
            return .startSession
        }
        if let least = leastLoadedReady ?? live.min(by: { gauges[$0].load < gauges[$1].load }) ?? avoiding {
            return .session(least)
        }
        return .startSession
    }
}
