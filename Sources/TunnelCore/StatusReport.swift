import Foundation

/// What `tunneld status` shows: per service, where it listens and goes, its session, and
/// its counters.
public struct StatusReport: Codable, Equatable {
    public struct ServiceStatus: Codable, Equatable {
        public var name: String
        public var listen: String
        public var via: String
        public var target: String
        /// `idle`, `connecting`, `up` or `backing-off`.
        public var session: String
        /// How many SSH sessions to the server are up.
        public var sessionsUp: Int
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
            var session = service.session
            if service.sessionsUp > 1 { session += " (\(service.sessionsUp))" }
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
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
            text += line.trimmingCharacters(in: .whitespaces) + "\n"
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
        return text
    }

    static func bytes(_ count: Int) -> String {
        if count < 1024 { return "\(count) B" }
        if count < 1 << 20 { return String(format: "%.1f KiB", Double(count) / 1024) }
        if count < 1 << 30 { return String(format: "%.1f MiB", Double(count) / 1_048_576) }
        return String(format: "%.2f GiB", Double(count) / 1_073_741_824)
    }

    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: date)
    }
}
