import Glibc
import Platform

/// The pool's one timer thread: it sleeps until the earliest time a decision core asked to
/// be ticked (a persistent session's retry after a backoff), ticks, and sleeps again. With
/// nothing due it sleeps in `poll` without a timeout, so an idle daemon never wakes for it.
final class PoolTimer: @unchecked Sendable {
    private struct Schedule {
        var due: ContinuousClock.Instant?
        var isStopped = false
    }

    private let schedule = Locked(Schedule())
    private let wakeup: Wakeup?

    init() {
        wakeup = try? Wakeup()
    }

    /// Starts the thread. `tick` runs at each due time and returns the next, if any.
    func start(_ tick: @escaping @Sendable () -> ContinuousClock.Instant?) {
        guard let wakeup else { return }
        DetachedThread.start(name: "pool timer") { [self] in
            while true {
                let due = schedule.withLock { $0.isStopped ? nil : $0.due }
                if schedule.withLock({ $0.isStopped }) { return }
                if let due, due <= .now {
                    schedule.withLock { $0.due = nil }
                    if let next = tick() { wake(at: next) }
                    continue
                }
                var descriptor = pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, due.map { Socket.milliseconds(until: $0 + .milliseconds(1)) } ?? -1)
                wakeup.drain()
            }
        }
    }

    /// Makes sure the thread ticks at `instant` or earlier.
    func wake(at instant: ContinuousClock.Instant) {
        let isEarlier = schedule.withLock { schedule -> Bool in
            guard schedule.due.map({ instant < $0 }) ?? true else { return false }
            schedule.due = instant
            return true
        }
        if isEarlier { wakeup?.signal() }
    }

    /// Ends the thread.
    func stop() {
        schedule.withLock { $0.isStopped = true }
        wakeup?.signal()
    }
}
