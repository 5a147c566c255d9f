import FoundationEssentials
import Glibc
import Platform

/// systemd's watchdog (`WatchdogSec=`), kept by the threads that could hang rather than by a
/// timer: each event loop (the listener, every session) beats after each pass and wakes at
/// least every `beatInterval`. A beat that finds every loop beaten within the watchdog's
/// half period sends `WATCHDOG=1`; if one loop hangs, nobody sends, and systemd restarts the
/// daemon. Off (no beats, no extra wake-ups) when systemd did not ask for it.
final class Watchdog: Sendable {
    /// How often each loop must beat; nil when the watchdog is off.
    let beatInterval: Duration?
    private let period: Duration
    private let notifier: SystemdNotifier
    private let state = Locked<(beats: [Int: ContinuousClock.Instant], nextID: Int, lastSent: ContinuousClock.Instant?)>(([:], 0, nil))

    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this process if set).
    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        notifier = SystemdNotifier(environment: environment)
        let pidMatches = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if pidMatches, notifier.isActive, let text = environment["WATCHDOG_USEC"], let usec = Int64(text), usec > 0 {
            period = .microseconds(usec)
            beatInterval = .microseconds(usec / 4)
        } else {
            period = .zero
            beatInterval = nil
        }
    }

    var isActive: Bool { beatInterval != nil }

    /// A loop joins; it must beat from now on. Returns its number.
    func join() -> Int? {
        guard isActive else { return nil }
        return state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            state.beats[id] = .now
            return id
        }
    }

    /// A loop leaves (its session ended).
    func leave(_ id: Int?) {
        guard let id else { return }
        state.withLock { _ = $0.beats.removeValue(forKey: id) }
    }

    /// Loop `id` finished a pass. Sends `WATCHDOG=1` when every loop has beaten within half
    /// the watchdog period and the last notice is a beat interval old.
    func beat(_ id: Int?, now: ContinuousClock.Instant = .now) {
        guard let id, let beatInterval else { return }
        let shouldSend = state.withLock { state -> Bool in
            state.beats[id] = now
            guard state.lastSent.map({ now - $0 >= beatInterval }) ?? true else { return false }
            let everyoneAlive = state.beats.values.allSatisfy { now - $0 < period / 2 }
            if everyoneAlive { state.lastSent = now }
            return everyoneAlive
        }
        if shouldSend { notifier.notify(["WATCHDOG=1"]) }
    }

    /// `timeout` (poll milliseconds, -1 for none) shortened so the loop beats in time.
    func bound(_ timeout: Int32) -> Int32 {
        guard let beatInterval else { return timeout }
        let limit = Int32(beatInterval.components.seconds * 1000 + beatInterval.components.attoseconds / 1_000_000_000_000_000)
        return timeout < 0 ? max(1, limit) : min(timeout, max(1, limit))
    }
}
