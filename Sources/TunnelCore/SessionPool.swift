import Foundation
import Logging
import TunnelConfig

/// Finds or starts the session loop for each accepted client, and remembers, per session
/// key, how connecting has gone: failures back off 1 s doubling to 30 s, a success resets.
final class SessionPool {
    private struct KeyState {
        var settings: SessionSettings
        var loop: SessionLoop?
        var isUp = false
        var failures = 0
        var retryAt: ContinuousClock.Instant?
        var lastError: String?
    }

    /// A session key's state for `tunneld status`.
    enum SessionState: Equatable {
        case idle
        case connecting
        case up
        case backingOff(until: Date)

        var name: String {
            switch self {
            case .idle: return "idle"
            case .connecting: return "connecting"
            case .up: return "up"
            case .backingOff: return "backing-off"
            }
        }
    }

    /// The state of the session that `key` uses.
    func state(of key: SessionKey) -> SessionState {
        lock.lock()
        defer { lock.unlock() }
        guard let state = states[key] else { return .idle }
        if let retryAt = state.retryAt, retryAt > .now {
            return .backingOff(until: Date().addingTimeInterval((retryAt - .now).seconds))
        }
        if state.loop == nil { return .idle }
        return state.isUp ? .up : .connecting
    }

    private let lock = NSLock()
    private var states: [SessionKey: KeyState] = [:]
    private var isStopping = false
    /// Every loop whose thread still runs, including those a reload detached from their key.
    private var liveLoops: [ObjectIdentifier: SessionLoop] = [:]
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
        for (key, state) in states where state.settings.isPersistent && state.loop == nil && !isStopping {
            let loop = makeLoop(state.settings)
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
                let loop = makeLoop(state.settings)
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

    /// A new loop, counted as live until it ends. Call with the lock held.
    private func makeLoop(_ settings: SessionSettings) -> SessionLoop {
        let loop = SessionLoop(settings: settings, pool: self, logger: logger)
        liveLoops[ObjectIdentifier(loop)] = loop
        return loop
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
        states[key]?.isUp = true
    }

    /// Notes that the session of `key` went down.
    func recordDown(for key: SessionKey) {
        lock.lock()
        defer { lock.unlock() }
        states[key]?.isUp = false
    }

    /// Forgets a loop that has retired.
    func loopEnded(_ loop: SessionLoop) {
        lock.lock()
        defer { lock.unlock() }
        let key = loop.settings.key
        if states[key]?.loop === loop {
            states[key]?.loop = nil
            states[key]?.isUp = false
        }
        liveLoops[ObjectIdentifier(loop)] = nil
    }

    /// Takes a reloaded set of services. Keys still in use get the new settings for their
    /// next session; loops of keys no longer used finish their connections and end.
    func update(services: [Service]) {
        let byKey = Dictionary(grouping: services, by: \.sessionKey)
        lock.lock()
        var retiring: [SessionLoop] = []
        for (key, state) in states where byKey[key] == nil {
            if let loop = state.loop { retiring.append(loop) }
            states[key] = nil
        }
        for (key, group) in byKey {
            let settings = SessionSettings(key: key, services: group)
            if var state = states[key] {
                if state.settings != settings, let loop = state.loop {
                    // The running session keeps its settings; the next one gets the new.
                    retiring.append(loop)
                    state.loop = nil
                }
                state.settings = settings
                states[key] = state
            } else {
                states[key] = KeyState(settings: settings)
            }
        }
        lock.unlock()
        for loop in retiring { loop.stop(drainUntil: nil) }
        startPersistentSessions()
    }

    /// Stops every loop: connections get until `deadline` to finish.
    func stopAll(drainUntil deadline: ContinuousClock.Instant) {
        lock.lock()
        isStopping = true
        let loops = Array(liveLoops.values)
        lock.unlock()
        for loop in loops { loop.stop(drainUntil: deadline) }
    }

    /// Whether any loop is still running.
    var hasLiveLoops: Bool {
        lock.lock()
        defer { lock.unlock() }
        return !liveLoops.isEmpty
    }
}
