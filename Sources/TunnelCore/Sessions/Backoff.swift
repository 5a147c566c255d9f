/// How connecting to one server has gone, and when to try again.
///
/// Backoff throttles tunneld's own retries (1 s doubling to 30 s; a success resets it),
/// never a client: a client that arrives during a backoff starts a connect at once, unless
/// the last attempt failed less than `floor` ago (then it is refused with that failure, so
/// that offline fails fast and a flood of clients does not hammer the server).
struct Backoff: Sendable {
    /// A client may start a connect once the last failed attempt is this old.
    static let floor: Duration = .seconds(1)
    /// The longest wait between tunneld's own retries.
    static let ceiling = 30.0

    private(set) var failures = 0
    private(set) var lastError: String?
    /// When the last attempt failed.
    private(set) var lastFailureAt: ContinuousClock.Instant?
    /// When tunneld's own next retry is due (persistent sessions), if backing off.
    private(set) var retryAt: ContinuousClock.Instant?

    /// Notes a failed connect; returns the seconds until tunneld's own next attempt.
    mutating func failed(_ reason: String, now: ContinuousClock.Instant) -> Double {
        let delay = min(Self.ceiling, Double(1 << min(failures, 5)))
        failures += 1
        lastError = reason
        lastFailureAt = now
        retryAt = now + Duration(seconds: delay)
        return delay
    }

    /// Notes a successful connect: the backoff starts over; the last error stays for status.
    mutating func succeeded() {
        failures = 0
        retryAt = nil
        lastFailureAt = nil
    }

    /// Forgets the failures, e.g. when the network changed: the next attempt may go at once.
    mutating func reset() {
        failures = 0
        retryAt = nil
        lastFailureAt = nil
    }

    /// Why a client arriving `now` is refused without a new attempt, if it is: the last
    /// attempt failed less than `floor` ago.
    func refusal(now: ContinuousClock.Instant) -> String? {
        guard let lastFailureAt, now - lastFailureAt < Self.floor else { return nil }
        return lastError ?? "connecting failed"
    }

    /// Seconds until tunneld's own next attempt, or nil if one may start now.
    func wait(now: ContinuousClock.Instant) -> Double? {
        guard let retryAt, retryAt > now else { return nil }
        return (retryAt - now).seconds
    }

    /// Whether a client arriving now may make a backing-off session connect at once.
    func allowsClientAttempt(now: ContinuousClock.Instant) -> Bool {
        refusal(now: now) == nil
    }
}
