import Platform
import TunnelConfig

/// Which address last connected to each SSH server, and from which local address (RFC 8305's
/// cache): its family is tried first next time, so a network whose IPv6 is broken costs the
/// 250 ms attempt delay once, not on every connect. A network change or a wake makes it
/// stale: `forget()`; an entry whose local address is gone from this machine (the laptop
/// roamed) is dropped when next asked for, even if nobody called `forget()`.
final class FamilyCache: Sendable {
    /// The one cache of the process, shared by every session thread.
    static let shared = FamilyCache()

    private struct Entry {
        var address: RaceAddress
        /// The connection's own address, numeric; nil if it could not be read.
        var local: String?
    }

    private let winners = Locked<[Endpoint: Entry]>([:])
    private let localAddresses: @Sendable () -> Set<String>

    /// A cache that reads this machine's addresses with `localAddresses` (getifaddrs).
    init(localAddresses: @escaping @Sendable () -> Set<String> = { Socket.localAddresses() }) {
        self.localAddresses = localAddresses
    }

    /// The family that last connected to `server`, if any since the last `forget()` and the
    /// local address it connected from is still this machine's.
    func preferredFamily(for server: Endpoint) -> IPFamily? {
        guard let entry = winners.withLock({ $0[server] }) else { return nil }
        if let local = entry.local, !localAddresses().contains(local) {
            winners.withLock { $0[server] = nil }
            return nil
        }
        return entry.address.family
    }

    /// The address that last connected to `server`, for `--check --connect`.
    func lastAddress(for server: Endpoint) -> RaceAddress? {
        winners.withLock { $0[server]?.address }
    }

    /// Notes that `address` connected to `server` from the local address `local`.
    func remember(_ address: RaceAddress, from local: String?, for server: Endpoint) {
        winners.withLock { $0[server] = Entry(address: address, local: local) }
    }

    /// Forgets every server's family: the network changed, what worked may not any more.
    func forget() {
        winners.withLock { $0.removeAll() }
    }
}
