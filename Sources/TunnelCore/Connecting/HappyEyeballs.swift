import Glibc

/// The Internet protocol family of one address.
enum IPFamily: Sendable, Hashable, CustomStringConvertible {
    case ipv6
    case ipv4

    /// The family of a numeric address, or nil for a name.
    init?(literal host: String) {
        var v6 = in6_addr()
        var v4 = in_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            self = .ipv6
        } else if inet_pton(AF_INET, host, &v4) == 1 {
            self = .ipv4
        } else {
            return nil
        }
    }

    /// The other family.
    var other: IPFamily { self == .ipv6 ? .ipv4 : .ipv6 }

    var description: String { self == .ipv6 ? "IPv6" : "IPv4" }
}

/// One address of a server, numeric, with its family.
struct RaceAddress: Sendable, Hashable, CustomStringConvertible {
    var host: String
    var family: IPFamily

    var description: String { host }
}

/// Why a race found no connection: each address tried and how it failed, and each lookup
/// that failed or never answered.
struct RaceFailure: Sendable, Equatable {
    struct Attempt: Sendable, Equatable {
        var address: RaceAddress
        var reason: String
    }

    /// In the order they were started.
    var attempts: [Attempt] = []
    /// Lookups that failed, with the resolver's reason.
    var lookups: [IPFamily: String] = [:]
    /// Lookups that had not answered by the deadline.
    var unanswered: [IPFamily] = []
    /// Addresses known but never tried because the deadline came first.
    var untried = 0

    /// Why a lookup has no answer at the deadline.
    static let silence = "the resolver did not answer within connect_timeout"

    /// One sentence: `cannot connect to mail.test:22: 2001:db8::1 timed out; 192.0.2.1 refused`,
    /// or `cannot resolve mail.test: …` when no address was found. `host` is the name
    /// looked up; `server` the name and port as the user wrote them.
    func sentence(host: String, server: String) -> String {
        if attempts.isEmpty && untried == 0 {
            var reasons = lookups
            for family in unanswered { reasons[family] = Self.silence }
            let distinct = Set(reasons.values)
            if distinct.count <= 1 { return "cannot resolve \(host): \(distinct.first ?? "no address")" }
            let each = [IPFamily.ipv6, .ipv4].compactMap { family in reasons[family].map { "\(family): \($0)" } }
            return "cannot resolve \(host): " + each.joined(separator: "; ")
        }
        // A family the name has no address of is not news; a resolver that went silent is.
        var parts = attempts.map { "\($0.address) \($0.reason)" }
        if untried > 0 { parts.append("\(untried) more not tried within connect_timeout") }
        for family in [IPFamily.ipv6, .ipv4] where unanswered.contains(family) {
            parts.append("no \(family) address: \(Self.silence)")
        }
        return "cannot connect to \(server): " + parts.joined(separator: "; ")
    }
}

/// The Happy Eyeballs attempt scheduler (RFC 8305), a pure state machine: it is told what
/// happened (an answer arrived, an attempt connected or failed, time passed) and says what to
/// do (start an attempt, close one, done). It owns no socket and reads no clock.
///
/// Rules: the race starts when the preferred family's answer is in, or 50 ms after the other
/// family's answer if the preferred one is still outstanding; late answers join it. Families
/// alternate, preferred first. A new attempt starts 250 ms after the last one while none has
/// connected, and at once when one fails. The first to connect wins and the others are closed.
/// The deadline bounds the whole race, lookups included.
struct HappyEyeballs {
    /// What the caller must do next.
    enum Action: Sendable, Equatable {
        /// Open a socket and start connecting to this address.
        case attempt(RaceAddress)
        /// Close the attempt to this address: another won, or time is up.
        case abandon(RaceAddress)
        /// The attempt to this address connected: it is the connection. The race is over.
        case connected(RaceAddress)
        /// No connection within the deadline. The race is over.
        case failed(RaceFailure)
    }

    /// How long the first answer waits for the preferred family's (the RFC's Resolution Delay).
    static let resolutionDelay: Duration = .milliseconds(50)
    /// How long an attempt has before the next one starts beside it (Connection Attempt Delay).
    static let attemptDelay: Duration = .milliseconds(250)

    private enum Lookup: Equatable {
        case pending
        case answered(at: ContinuousClock.Instant)
        case failed
    }

    /// The families to use, preferred first.
    private let families: [IPFamily]
    private let deadline: ContinuousClock.Instant
    private var lookups: [IPFamily: Lookup] = [:]
    private var untried: [IPFamily: [RaceAddress]] = [:]
    private var inFlight: [RaceAddress] = []
    private var hasStarted = false
    /// When the last attempt started; nil when the next may start at once.
    private var lastStart: ContinuousClock.Instant?
    private var lastFamily: IPFamily?
    private var failure = RaceFailure()
    /// Whether the race is over (connected or failed).
    private(set) var isFinished = false

    /// A race over `families` (preferred first; a restricted race lists one) that must end by
    /// `deadline`. Each family's lookup is outstanding until `answered` or `lookupFailed`.
    init(families: [IPFamily], deadline: ContinuousClock.Instant) {
        self.families = families
        self.deadline = deadline
        for family in families { lookups[family] = .pending }
    }

    /// The family's addresses arrived (in the resolver's order).
    mutating func answered(_ family: IPFamily, addresses: [RaceAddress], at now: ContinuousClock.Instant) -> [Action] {
        guard !isFinished, lookups[family] == .pending else { return [] }
        let fresh = addresses.filter { $0.family == family && !(untried[family] ?? []).contains($0) }
        if fresh.isEmpty {
            return lookupFailed(family, reason: "no address", at: now)
        }
        lookups[family] = .answered(at: now)
        untried[family, default: []] += fresh
        return step(at: now)
    }

    /// The family's lookup failed, with the resolver's reason.
    mutating func lookupFailed(_ family: IPFamily, reason: String, at now: ContinuousClock.Instant) -> [Action] {
        guard !isFinished, lookups[family] == .pending else { return [] }
        lookups[family] = .failed
        failure.lookups[family] = reason
        return step(at: now)
    }

    /// The attempt to `address` connected.
    mutating func attemptConnected(_ address: RaceAddress, at now: ContinuousClock.Instant) -> [Action] {
        guard !isFinished, let index = inFlight.firstIndex(of: address) else { return [] }
        inFlight.remove(at: index)
        isFinished = true
        let others = inFlight.map(Action.abandon)
        inFlight = []
        return others + [.connected(address)]
    }

    /// The attempt to `address` failed, with why (`refused`, `timed out`, …).
    mutating func attemptFailed(_ address: RaceAddress, reason: String, at now: ContinuousClock.Instant) -> [Action] {
        guard !isFinished, let index = inFlight.firstIndex(of: address) else { return [] }
        inFlight.remove(at: index)
        if let tried = failure.attempts.firstIndex(where: { $0.address == address }) { failure.attempts[tried].reason = reason }
        lastStart = nil
        return step(at: now)
    }

    /// Time passed: starts what is due, or ends the race at the deadline.
    mutating func tick(at now: ContinuousClock.Instant) -> [Action] {
        guard !isFinished else { return [] }
        return step(at: now)
    }

    /// When `tick` must next be called, or nil once the race is over.
    var nextWake: ContinuousClock.Instant? {
        guard !isFinished else { return nil }
        var wake = deadline
        if !hasStarted, let delayed = delayedStart { wake = min(wake, delayed) }
        if hasStarted, let lastStart, !inFlight.isEmpty, hasUntried { wake = min(wake, lastStart + Self.attemptDelay) }
        return wake
    }

    // MARK: Deciding

    private var hasUntried: Bool { families.contains { !(untried[$0] ?? []).isEmpty } }
    private var isLookupPending: Bool { lookups.values.contains(.pending) }

    /// When a race held back for the preferred family's answer may start anyway.
    private var delayedStart: ContinuousClock.Instant? {
        guard let preferred = families.first, lookups[preferred] == .pending else { return nil }
        let answers = lookups.values.compactMap { lookup -> ContinuousClock.Instant? in
            if case .answered(let at) = lookup { return at }
            return nil
        }
        return answers.min().map { $0 + Self.resolutionDelay }
    }

    private mutating func step(at now: ContinuousClock.Instant) -> [Action] {
        if now >= deadline { return expire() }
        if !hasStarted {
            guard hasUntried else { return finishIfExhausted() }
            let preferredIsIn = families.first.map { lookups[$0] != .pending } ?? true
            guard preferredIsIn || (delayedStart.map { now >= $0 } ?? false) else { return [] }
            hasStarted = true
        }
        var actions: [Action] = []
        if inFlight.isEmpty || lastStart.map({ now >= $0 + Self.attemptDelay }) ?? true, let next = takeNext() {
            inFlight.append(next)
            failure.attempts.append(.init(address: next, reason: "timed out"))
            lastStart = now
            lastFamily = next.family
            actions.append(.attempt(next))
        }
        return actions + finishIfExhausted()
    }

    /// The next address: the family other than the last attempt's when it has one, the
    /// preferred family first.
    private mutating func takeNext() -> RaceAddress? {
        let order = lastFamily.map { [$0.other, $0] } ?? families
        for family in order where !(untried[family] ?? []).isEmpty {
            return untried[family]!.removeFirst()
        }
        return nil
    }

    /// Fails the race when nothing is in flight, nothing is left to try and no answer can come.
    private mutating func finishIfExhausted() -> [Action] {
        guard inFlight.isEmpty, !hasUntried, !isLookupPending else { return [] }
        isFinished = true
        return [.failed(failure)]
    }

    /// The deadline passed: every attempt in flight is closed (it timed out), every pending
    /// lookup noted as unanswered.
    private mutating func expire() -> [Action] {
        isFinished = true
        failure.unanswered = families.filter { lookups[$0] == .pending }
        failure.untried = families.reduce(0) { $0 + (untried[$1]?.count ?? 0) }
        let abandoned = inFlight.map(Action.abandon)
        inFlight = []
        return abandoned + [.failed(failure)]
    }
}
