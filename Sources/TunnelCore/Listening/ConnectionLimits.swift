import Platform
import TunnelConfig

/// A service's `instances`, `per_source` and `cps` limits, as xinetd defines them, with the
/// counts of live connections they are checked against. Used from the listener thread (admit)
/// and the session threads (release), so every access takes the lock.
final class ConnectionLimits: @unchecked Sendable {
    private let lock = Lock()
    private var instances: Int?
    private var perSource: Int?
    private var rate: ConnectionRate?

    private var live = 0
    private var liveBySource: [String: Int] = [:]
    private var windowStart = ContinuousClock.now
    private var inWindow = 0
    private var pausedUntil: ContinuousClock.Instant?

    init(service: Service) {
        update(service)
    }

    /// Takes new limits after a reload; live counts carry on.
    func update(_ service: Service) {
        lock.lock()
        instances = service.instances
        perSource = service.perSource
        rate = service.cps
        lock.unlock()
    }

    /// Counts a new client from `source` in, or names the limit that turns it away.
    func admit(source: String, now: ContinuousClock.Instant = .now) -> ConnectionLimit? {
        lock.lock()
        defer { lock.unlock() }
        if let rate {
            if now - windowStart >= .seconds(1) {
                windowStart = now
                inWindow = 0
            }
            inWindow += 1
            if inWindow > rate.rate {
                pausedUntil = now + Duration(seconds: rate.pause)
                inWindow = 0
                return .cps
            }
        }
        if let instances, live >= instances { return .instances }
        if let perSource, liveBySource[source, default: 0] >= perSource { return .perSource }
        live += 1
        liveBySource[source, default: 0] += 1
        return nil
    }

    /// A connection `admit` let in has ended.
    func release(source: String) {
        lock.lock()
        defer { lock.unlock() }
        live -= 1
        let remaining = liveBySource[source, default: 1] - 1
        liveBySource[source] = remaining > 0 ? remaining : nil
    }

    /// Until when the service does not accept (cps exceeded), if it is paused now.
    func pause(at now: ContinuousClock.Instant = .now) -> ContinuousClock.Instant? {
        lock.lock()
        defer { lock.unlock() }
        guard let pausedUntil, pausedUntil > now else { return nil }
        return pausedUntil
    }
}
