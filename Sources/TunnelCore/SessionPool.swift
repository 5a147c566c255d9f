import Foundation
import Logging
import TunnelConfig

/// Finds or starts the session loop for each accepted client, and remembers, per session
/// key, how connecting has gone: failures back off 1 s doubling to 30 s, a success resets.
final class SessionPool {
    private struct KeyState {
        var settings: SessionSettings
        var loop: SessionLoop?
        var failures = 0
        var retryAt: ContinuousClock.Instant?
        var lastError: String?
    }

    private let lock = NSLock()
    private var states: [SessionKey: KeyState] = [:]
    private var isStopping = false
    private let logger: Logger

    init(services: [Service], logger: Logger) {
        self.logger = logger
        let byKey = Dictionary(grouping: services, by: \.sessionKey)
        for (key, group) in byKey {
            states[key] = KeyState(settings: SessionSettings(key: key, services: group))
        }
    }

    /// Starts the loops of persistent sessions.
    func startPersistentSessions() {
        lock.lock()
        defer { lock.unlock() }
        for (key, state) in states where state.settings.isPersistent && state.loop == nil {
            let loop = SessionLoop(settings: state.settings, pool: self, logger: logger)
            states[key]?.loop = loop
            loop.start()
        }
    }

    /// Sends a client to its session's loop, starting one if needed. During a backoff the
    /// client is closed at once with the last error.
    func dispatch(_ connection: Connection) {
        let key = connection.service.sessionKey
        var refusal: String?
        lock.lock()
        if isStopping {
            refusal = "tunneld is stopping"
        } else if var state = states[key] {
            if let retryAt = state.retryAt, retryAt > .now {
                refusal = state.lastError ?? "connecting failed"
            } else if state.loop?.enqueue(connection) != true {
                let loop = SessionLoop(settings: state.settings, pool: self, logger: logger)
                state.loop = loop
                states[key] = state
                _ = loop.enqueue(connection)
                loop.start()
            }
        } else {
            refusal = "no session settings for this service"
        }
        lock.unlock()
        if let refusal { connection.finish(.sshFailed(refusal), logger: logger) }
    }

    /// How long a persistent loop must still wait before connecting again, if at all.
    func backoffRemaining(for key: SessionKey) -> Double? {
        lock.lock()
        defer { lock.unlock() }
        guard let retryAt = states[key]?.retryAt else { return nil }
        let remaining = (retryAt - .now).seconds
        return remaining > 0 ? remaining : nil
    }

    /// Notes a failed connect; returns the seconds until the next attempt is allowed.
    func recordFailure(for key: SessionKey, reason: String) -> Double {
        lock.lock()
        defer { lock.unlock() }
        guard var state = states[key] else { return 0 }
        let delay = min(30, pow(2, Double(state.failures)))
        state.failures += 1
        state.retryAt = .now + Duration(seconds: delay)
        state.lastError = reason
        states[key] = state
        return delay
    }

    /// Notes a successful connect: the backoff starts over.
    func recordSuccess(for key: SessionKey) {
        lock.lock()
        defer { lock.unlock() }
        states[key]?.failures = 0
        states[key]?.retryAt = nil
    }

    /// Forgets a loop that has retired.
    func loopEnded(_ loop: SessionLoop) {
        lock.lock()
        defer { lock.unlock() }
        let key = loop.settings.key
        if states[key]?.loop === loop { states[key]?.loop = nil }
    }

    /// Stops every loop; their connections are closed.
    func stopAll() {
        lock.lock()
        isStopping = true
        let loops = states.values.compactMap(\.loop)
        lock.unlock()
        for loop in loops { loop.stop() }
    }

    /// Whether any loop is still running.
    var hasLiveLoops: Bool {
        lock.lock()
        defer { lock.unlock() }
        return states.values.contains { $0.loop != nil }
    }
}
