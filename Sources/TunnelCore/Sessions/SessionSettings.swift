import TunnelConfig

/// How one shared SSH session behaves, merged from every service that uses it: the longest
/// linger and connect timeout, the most frequent keepalive, the most sessions, and
/// persistent if any service is.
struct SessionSettings: Equatable, Sendable {
    var key: SessionKey
    var linger: Double
    var isPersistent: Bool
    var keepalive: Keepalive
    var connectTimeout: Double
    /// How many sessions to the server may run at once.
    var maxSessions: Int
    /// How many a burst, or a heavy load on each, may raise that to.
    var mostSessions: Int
    /// Health probes of targets, run by the persistent session.
    var healthChecks: [HealthCheck]

    /// - `services`: the services whose own route `key` is;
    /// - `carried`: the services whose route goes through `key` as a jump host. Their
    ///   sessions' lifetimes and liveness rules count too; whether the session is persistent
    ///   and what it probes are the own services' alone (a persistent session behind a jump
    ///   host keeps the jump host's session up through its own link).
    init(key: SessionKey, services: [Service], carried: [Service] = []) {
        self.key = key
        let all = services + carried
        linger = all.map(\.linger).max() ?? 30
        isPersistent = services.contains(where: \.isPersistent)
        keepalive = all.map(\.keepalive).min(by: { $0.interval < $1.interval }) ?? Keepalive()
        connectTimeout = all.map(\.connectTimeout).max() ?? 10
        maxSessions = all.map(\.sessions).max() ?? 4
        mostSessions = max(maxSessions, all.map(\.mostSessions).max() ?? maxSessions + SessionPolicy.burstAllowance)
        healthChecks = services.compactMap { service in
            service.probeInterval.map { HealthCheck(service: service.name, target: service.target, interval: $0) }
        }
    }

    /// The settings of every session key `services` need: their routes, and the routes to
    /// their jump hosts (each shared by every route behind it).
    static func byKey(_ services: [Service]) -> [SessionKey: SessionSettings] {
        var own: [SessionKey: [Service]] = [:]
        var carried: [SessionKey: [Service]] = [:]
        for service in services {
            own[service.sessionKey, default: []].append(service)
            var next = service.sessionKey.jumpRoute
            while let jumpRoute = next {
                carried[jumpRoute, default: []].append(service)
                next = jumpRoute.jumpRoute
            }
        }
        var settings: [SessionKey: SessionSettings] = [:]
        for key in Set(own.keys).union(carried.keys) {
            settings[key] = SessionSettings(key: key, services: own[key] ?? [], carried: carried[key] ?? [])
        }
        return settings
    }

    /// Seconds of silence from the server after which the session counts as dead.
    var silenceLimit: Double { keepalive.interval * Double(keepalive.count + 1) }

    /// How long a probe may go unanswered while a client waits on a session that was quiet
    /// (after a sleep, the first client must not wait out a dead session's keepalive).
    var urgentProbeBound: Double { min(3, connectTimeout) }

    /// How long a client's channel open may wait for the server's answer.
    var openTimeout: Double { connectTimeout }

    /// An open under way longer than this sends the next clients to a sibling session.
    static let stuckOpenBound: Duration = .milliseconds(250)

    /// A session carrying this many connections makes the pool open a sibling, if allowed.
    static let spreadThreshold = 4
}

extension Double {
    /// The value with three decimals (`0.012`), without Foundation's formatter.
    var threeDecimals: String {
        let thousandths = Int((self * 1000).rounded())
        let fraction = String(abs(thousandths) % 1000)
        return "\(thousandths < 0 ? "-" : "")\(abs(thousandths) / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    init(seconds: Double) {
        self = .nanoseconds(Int64(seconds * 1e9))
    }
}
