import FoundationEssentials
import Glibc
import TunnelConfig

/// Where a server's sessions are, as status shows it.
public enum ServerState: String, Codable, Sendable {
    case idle
    case connecting
    case up
    case backingOff = "backing-off"
}

/// What `tunneld status` shows: per service, where it listens and goes, its session, and
/// its counters.
public struct StatusReport: Codable, Equatable {
    /// A server's channel-open queue: libssh2 opens one channel at a time per session, so in
    /// a burst clients wait for their turn.
    public struct OpenQueue: Codable, Equatable {
        /// Clients waiting for a channel now.
        public var waiting = 0
        /// How long the next client would wait for its open to start, on the best session.
        public var waitSeconds: Double?
        /// Opens the server answered in the last second.
        public var perSecond = 0
        /// Sessions started beyond `sessions` for a burst.
        public var burstSessions = 0
        /// Clients refused at once because their wait would have passed connect_timeout.
        public var overloadRefusals = 0
    }

    public struct ServiceStatus: Codable, Equatable {
        public var name: String
        public var listen: String
        public var via: String
        public var target: String
        public var session: ServerState
        /// How many SSH sessions to the server are up.
        public var sessionsUp: Int
        /// How many of them are stuck on a channel open (they do not count toward `sessions`).
        public var sessionsStuck = 0
        /// Whether the server's hard cap on sessions (`sessions` + 16) is reached.
        public var sessionCapReached = false
        /// The server's channel-open queue.
        public var opens = OpenQueue()
        /// When a backing-off session tries again (ISO 8601).
        public var retryAt: String?
        /// The last failure to connect to the server, and when (ISO 8601).
        public var connectError: String?
        public var connectErrorAt: String?
        public var liveConnections: Int
        public var totalConnections: Int
        public var bytesUp: Int
        public var bytesDown: Int
        public var refusals: [String: Int]
        public var lastError: String?
        public var lastErrorAt: String?
        /// Ended connections by result (`ok`, `refused`, `ssh-failed`, ...).
        var results: [String: Int] = [:]
        /// Seconds from accept to open channel.
        var openLatency = Histogram()
        /// Seconds the server's oldest session has been up.
        var sessionAgeSeconds: Double?
        /// Failed connects to the server since start.
        var connectFailures = 0
        /// The last health probe (`probe = interval`): `ok` or why not, and when.
        public var probe: String?
        public var probeAt: String?
    }

    public var pid: Int32
    public var startedAt: String
    public var services: [ServiceStatus]

    /// Stable JSON: sorted keys, pretty-printed.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self) + "\n"
    }

    /// A table for people.
    public func table() -> String {
        var rows = [["SERVICE", "LISTEN", "VIA", "TARGET", "SESSION", "LIVE", "TOTAL", "UP", "DOWN", "LAST ERROR"]]
        for service in services {
            var session = service.session.rawValue
            if service.sessionsUp > 1 || service.sessionsStuck > 0 {
                session += " (\(service.sessionsUp)" + (service.sessionsStuck > 0 ? ", \(service.sessionsStuck) stuck" : "") + ")"
            }
            if service.opens.burstSessions > 0 { session += " +\(service.opens.burstSessions) burst" }
            if service.sessionCapReached { session += " at cap" }
            if let retryAt = service.retryAt { session += " until \(retryAt)" }
            var lastError = service.lastError ?? "-"
            if let at = service.lastErrorAt { lastError += " (\(at))" }
            rows.append([
                service.name, service.listen, service.via, service.target, session,
                "\(service.liveConnections)", "\(service.totalConnections)",
                Self.bytes(service.bytesUp), Self.bytes(service.bytesDown), lastError,
            ])
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        var text = "tunneld pid \(pid), up since \(startedAt)\n"
        for row in rows {
            let line = row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padded(to: widths[index])
            }.joined(separator: "  ")
            text += line.trimmingWhitespace + "\n"
        }
        for service in services {
            guard let probe = service.probe else { continue }
            text += "\(service.name) probe: \(probe)\(service.probeAt.map { " at \($0)" } ?? "")\n"
        }
        var queues = Set<String>()
        for service in services where service.opens.waiting > 0 || service.opens.perSecond > 0 || service.opens.overloadRefusals > 0 {
            guard queues.insert(service.via).inserted else { continue }
            let opens = service.opens
            text += "\(service.via) open queue: \(opens.waiting) waiting"
            if let wait = opens.waitSeconds { text += ", next waits \(Self.number((wait * 1000).rounded() / 1000)) s" }
            text += ", \(opens.perSecond) opens/s"
            if opens.overloadRefusals > 0 { text += ", \(opens.overloadRefusals) refused as overload" }
            text += "\n"
        }
        var shown = Set<String>()
        for service in services {
            guard let error = service.connectError, shown.insert(service.via).inserted else { continue }
            text += "\(service.via) last failed to connect\(service.connectErrorAt.map { " at \($0)" } ?? ""): \(error)"
            text += service.retryAt.map { "; next try at \($0)\n" } ?? "\n"
        }
        for service in services where !service.refusals.isEmpty {
            let list = service.refusals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            text += "\(service.name) refused: \(list)\n"
        }
        // Server messages and names from outside: no control or bidi character reaches a terminal.
        return text.split(separator: "\n", omittingEmptySubsequences: false).map { ControlCharacters.escaped(String($0)) }.joined(separator: "\n")
    }

    /// The Prometheus text exposition format (version 0.0.4): counters per service and
    /// result, gauges of live connections and sessions, and the channel-open latency histogram.
    public func prometheus() -> String {
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: [(String, String)], value: String)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for sample in samples {
                let labels = sample.labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",")
                text += labels.isEmpty ? "\(name) \(sample.value)\n" : "\(name){\(labels)} \(sample.value)\n"
            }
        }
        let results = ["ok", "refused", "ssh-failed", "limit", "access", "client-error", "shutdown"]
        family("tunneld_connections_total", "counter", "Connections accepted and ended, by result.", services.flatMap { service in
            results.map { result in ([("service", service.name), ("result", result)], "\(service.results[result] ?? 0)") }
        })
        family("tunneld_connections_active", "gauge", "Connections open now.", services.map { ([("service", $0.name)], "\($0.liveConnections)") })
        family("tunneld_bytes_total", "counter", "Bytes carried, up (client to target) and down.", services.flatMap { service in
            [([("service", service.name), ("direction", "up")], "\(service.bytesUp)"),
             ([("service", service.name), ("direction", "down")], "\(service.bytesDown)")]
        })
        text += "# HELP tunneld_channel_open_seconds Seconds from accepting a client to its channel being open.\n"
        text += "# TYPE tunneld_channel_open_seconds histogram\n"
        for service in services {
            let label = "service=\"\(Self.escapeLabel(service.name))\""
            for (index, bound) in Histogram.bounds.enumerated() {
                text += "tunneld_channel_open_seconds_bucket{\(label),le=\"\(Self.number(bound))\"} \(service.openLatency.buckets[index])\n"
            }
            text += "tunneld_channel_open_seconds_bucket{\(label),le=\"+Inf\"} \(service.openLatency.count)\n"
            text += "tunneld_channel_open_seconds_sum{\(label)} \(Self.number(service.openLatency.sum))\n"
            text += "tunneld_channel_open_seconds_count{\(label)} \(service.openLatency.count)\n"
        }
        let probed = services.filter { $0.probe != nil }
        if !probed.isEmpty {
            family("tunneld_probe_up", "gauge", "Whether the last health probe of the service's target opened a channel.",
                   probed.map { ([("service", $0.name)], $0.probe == "ok" ? "1" : "0") })
        }
        var servers: [ServiceStatus] = []
        for service in services where !servers.contains(where: { $0.via == service.via }) { servers.append(service) }
        family("tunneld_sessions_up", "gauge", "SSH sessions up to the server.", servers.map { ([("server", $0.via)], "\($0.sessionsUp)") })
        family("tunneld_sessions_stuck", "gauge", "SSH sessions to the server stuck on a channel open (outside the sessions count).",
               servers.map { ([("server", $0.via)], "\($0.sessionsStuck)") })
        family("tunneld_sessions_burst", "gauge", "SSH sessions to the server started beyond `sessions` for a burst of channel opens.",
               servers.map { ([("server", $0.via)], "\($0.opens.burstSessions)") })
        family("tunneld_open_queue_clients", "gauge", "Clients waiting for a channel to be opened on the server's sessions.",
               servers.map { ([("server", $0.via)], "\($0.opens.waiting)") })
        family("tunneld_open_queue_wait_seconds", "gauge", "How long the next client would wait for its channel open to start.",
               servers.map { ([("server", $0.via)], Self.number($0.opens.waitSeconds ?? 0)) })
        family("tunneld_opens_per_second", "gauge", "Channel opens the server answered in the last second.",
               servers.map { ([("server", $0.via)], "\($0.opens.perSecond)") })
        family("tunneld_overload_refusals_total", "counter", "Clients refused at once because their wait for a channel would have passed connect_timeout.",
               servers.map { ([("server", $0.via)], "\($0.opens.overloadRefusals)") })
        family("tunneld_session_age_seconds", "gauge", "Seconds the server's oldest session has been up (0 when none is).",
               servers.map { ([("server", $0.via)], Self.number($0.sessionAgeSeconds ?? 0)) })
        family("tunneld_connect_failures_total", "counter", "Failed attempts to set up a session with the server.",
               servers.map { ([("server", $0.via)], "\($0.connectFailures)") })
        return text
    }

    /// A label value with backslash, double quote and newline escaped.
    static func escapeLabel(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    /// A sample value: integers without a fraction, others as Swift prints a Double.
    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }

    static func bytes(_ count: Int) -> String {
        if count < 1024 { return "\(count) B" }
        if count < 1 << 20 { return printf("%.1f KiB", Double(count) / 1024) }
        if count < 1 << 30 { return printf("%.1f MiB", Double(count) / 1_048_576) }
        return printf("%.2f GiB", Double(count) / 1_073_741_824)
    }

    /// `value` formatted by vsnprintf(3) with `format`, which takes one double.
    private static func printf(_ format: String, _ value: Double) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        _ = withVaList([value]) { vsnprintf(&buffer, buffer.count, format, $0) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `date` in UTC to the second, as ISO 8601: `2026-12-03T09:29:05Z`.
    static func timestamp(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
