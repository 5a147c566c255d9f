import Foundation
import Glibc
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
        let allowed = onlyFrom.flatMap { bestMatch($0, address) }
        let denied = bestMatch(noAccess, address)
        if onlyFrom != nil && allowed == nil {
            return "not in only_from"
        }
        if let denied, denied.specificity >= (allowed?.specificity ?? -1) {
            return "no_access \(denied.rule)"
        }
        return nil
    }

    private func bestMatch(_ rules: [AddressMatch], _ address: [UInt8]) -> (specificity: Int, rule: String)? {
        var best: (specificity: Int, rule: String)?
        for rule in rules {
            guard let specificity = specificity(of: rule, for: address) else { continue }
            if specificity > (best?.specificity ?? -1) {
                best = (specificity, Self.describe(rule))
            }
        }
        return best
    }

    private func specificity(of rule: AddressMatch, for address: [UInt8]) -> Int? {
        switch rule {
        case .network(let network, let prefix):
            guard network.count == address.count, Self.prefix(network, address, prefix) else { return nil }
            return prefix
        case .hostname(let name):
            return resolver.addresses(of: name).contains(address) ? address.count * 8 : nil
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

/// Resolves host names of access rules, remembering answers for a minute.
final class HostResolver: @unchecked Sendable {
    static let shared = HostResolver()

    private let lock = NSLock()
    private var cache: [String: (addresses: [[UInt8]], until: ContinuousClock.Instant)] = [:]

    func addresses(of name: String) -> [[UInt8]] {
        lock.lock()
        if let entry = cache[name], entry.until > .now {
            lock.unlock()
            return entry.addresses
        }
        lock.unlock()
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        var addresses: [[UInt8]] = []
        if getaddrinfo(name, nil, &hints, &list) == 0 {
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
            freeaddrinfo(list)
        }
        lock.lock()
        cache[name] = (addresses, .now + .seconds(60))
        lock.unlock()
        return addresses
    }
}
