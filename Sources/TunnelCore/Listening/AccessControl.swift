import Dispatch
import Glibc
import Platform
import TunnelConfig

/// Decides whether a client address may use a service, from `only_from` and `no_access`
/// as xinetd reads them: no `only_from` means anyone, an empty one nobody; IPv4-mapped IPv6
/// clients (`::ffff:a.b.c.d`, on a `::` listener) are IPv4 clients; when both lists match, the more
/// specific match (the longer prefix; a host name counts as a full address) wins, and a tie
/// refuses.
struct AccessControl {
    let onlyFrom: [AddressMatch]?
    let noAccess: [AddressMatch]
    private let resolver: HostResolver

    init(service: Service, resolver: HostResolver = .shared) {
        onlyFrom = service.onlyFrom
        noAccess = service.noAccess
        self.resolver = resolver
    }

    /// Whether there is any rule at all (most services have none).
    var isOpen: Bool { onlyFrom == nil && noAccess.isEmpty }

    /// nil when `peer` (a numeric address) may connect, else the rule that refuses it.
    func refusal(for peer: String) -> String? {
        guard !isOpen else { return nil }
        guard let address = Self.bytes(of: peer) else { return "unparsable client address \(peer)" }
        let allowed = onlyFrom.flatMap { bestMatch($0, address, unknownMatches: false) }
        let denied = bestMatch(noAccess, address, unknownMatches: true)
        if onlyFrom != nil && allowed == nil {
            return "not in only_from"
        }
        if let denied, denied.specificity >= (allowed?.specificity ?? -1) {
            return "no_access \(denied.rule)"
        }
        return nil
    }

    private func bestMatch(_ rules: [AddressMatch], _ address: [UInt8], unknownMatches: Bool) -> (specificity: Int, rule: String)? {
        var best: (specificity: Int, rule: String)?
        for rule in rules {
            guard let specificity = specificity(of: rule, for: address, unknownMatches: unknownMatches) else { continue }
            if specificity > (best?.specificity ?? -1) {
                best = (specificity, Self.describe(rule))
            }
        }
        return best
    }

    /// How specific a matching rule is, or nil if it does not match. A host name not
    /// resolved (yet, or at all) matches only when `unknownMatches`: so an unresolved
    /// `no_access` name refuses (fails closed) and an unresolved `only_from` name admits nobody.
    private func specificity(of rule: AddressMatch, for address: [UInt8], unknownMatches: Bool) -> Int? {
        switch rule {
        case .network(let network, let prefix):
            guard network.count == address.count, Self.prefix(network, address, prefix) else { return nil }
            return prefix
        case .hostname(let name):
            switch resolver.answer(for: name) {
            case .addresses(let addresses):
                return addresses.contains(address) ? address.count * 8 : nil
            case .unknown:
                return unknownMatches ? address.count * 8 : nil
            }
        }
    }

    /// The host names the rules name, to resolve before clients come.
    var hostNames: [String] {
        ((onlyFrom ?? []) + noAccess).compactMap { rule in
            if case .hostname(let name) = rule { return name }
            return nil
        }
    }

    static func prefix(_ network: [UInt8], _ address: [UInt8], _ length: Int) -> Bool {
        var remaining = length
        for index in network.indices where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            if network[index] & mask != address[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// 4 bytes for IPv4 (also for IPv4-mapped IPv6), 16 for IPv6.
    static func bytes(of address: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            return withUnsafeBytes(of: v4) { Array($0) }
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, address, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return Array(bytes[12..<16])
        }
        return bytes
    }

    static func describe(_ rule: AddressMatch) -> String {
        switch rule {
        case .hostname(let name): return name
        case .network(let address, let prefix):
            var text = [CChar](repeating: 0, count: 64)
            address.withUnsafeBytes { raw in
                _ = inet_ntop(address.count == 4 ? AF_INET : AF_INET6, raw.baseAddress, &text, socklen_t(text.count))
            }
            let host = String(cString: text)
            return prefix == address.count * 8 ? host : "\(host)/\(prefix)"
        }
    }
}

/// Resolves the host names of access rules on its own thread, never on the accept path:
/// a client is checked against the answers already known. Answers are kept for a minute
/// (a failure for ten seconds) and refreshed in the background while they are used.
final class HostResolver: @unchecked Sendable {
    static let shared = HostResolver()

    /// What is known of a name now.
    enum Answer: Equatable {
        case addresses([[UInt8]])
        /// Not resolved yet, or the lookup failed.
        case unknown
    }

    private struct Entry {
        var addresses: [[UInt8]]?
        var until: ContinuousClock.Instant
    }

    /// Names kept at most; rules come from the configuration, so this is only a safety bound.
    private static let capacity = 4096
    private let state = Locked<(cache: [String: Entry], queue: [String], queued: Set<String>)>(([:], [], []))
    private let wakeup = DispatchSemaphore(value: 0)
    private let resolve: @Sendable (String) -> [[UInt8]]?

    /// - `resolve`: the lookup (getaddrinfo; tests pass their own). nil means it failed.
    init(resolve: @escaping @Sendable (String) -> [[UInt8]]? = HostResolver.lookUp) {
        self.resolve = resolve
        DetachedThread.start(name: "resolver") { [self] in work() }
    }

    /// The addresses of `name` as known now; schedules a lookup when unknown or old.
    func answer(for name: String) -> Answer {
        let (entry, needsLookup) = state.withLock { state -> (Entry?, Bool) in
            let entry = state.cache[name]
            let needsLookup = (entry.map { $0.until <= .now } ?? true) && !state.queued.contains(name)
            if needsLookup && state.queued.count < Self.capacity {
                state.queue.append(name)
                state.queued.insert(name)
            }
            return (entry, needsLookup)
        }
        if needsLookup { wakeup.signal() }
        guard let addresses = entry?.addresses else { return .unknown }
        return .addresses(addresses)
    }

    /// Starts lookups of `names` now, e.g. every host name rule at start and reload.
    func prefetch(_ names: [String]) {
        for name in names { _ = answer(for: name) }
    }

    /// Waits until `name` has an answer or `timeout` passes (tests, and `--check`).
    func waitForAnswer(_ name: String, timeout: Duration) -> Answer {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let known = state.withLock { $0.cache[name] != nil }
            if known { break }
            _ = answer(for: name)
            usleep(5_000)
        }
        return state.withLock { $0.cache[name]?.addresses.map(Answer.addresses) ?? .unknown }
    }

    private func work() {
        while true {
            wakeup.wait()
            while let name = state.withLock({ state -> String? in state.queue.isEmpty ? nil : state.queue.removeFirst() }) {
                let addresses = resolve(name)
                state.withLock { state in
                    state.queued.remove(name)
                    if state.cache.count >= Self.capacity && state.cache[name] == nil { state.cache.removeAll() }
                    state.cache[name] = Entry(addresses: addresses, until: .now + .seconds(addresses == nil ? 10 : 60))
                }
            }
        }
    }

    /// getaddrinfo's IPv4 and IPv6 addresses for `name`, or nil when the lookup failed.
    @Sendable static func lookUp(_ name: String) -> [[UInt8]]? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0 else { return nil }
        defer { freeaddrinfo(list) }
        var addresses: [[UInt8]] = []
        var entry = list
        while let info = entry {
            if info.pointee.ai_family == AF_INET {
                info.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    addresses.append(withUnsafeBytes(of: $0.pointee.sin_addr) { Array($0) })
                }
            } else if info.pointee.ai_family == AF_INET6 {
                info.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                    addresses.append(withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) })
                }
            }
            entry = info.pointee.ai_next
        }
        return addresses
    }
}
