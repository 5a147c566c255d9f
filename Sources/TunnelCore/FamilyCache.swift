import TunnelConfig

/// Which address last connected to each SSH server (RFC 8305's cache): its family is tried
/// first next time, so a network whose IPv6 is broken costs the 250 ms attempt delay once,
/// not on every connect. A network change or a wake makes it stale: `forget()`.
final class FamilyCache: Sendable {
    /// The one cache of the process, shared by every session thread.
    static let shared = FamilyCache()

    private let winners = Locked<[Endpoint: RaceAddress]>([:])

    /// The family that last connected to `server`, if any since the last `forget()`.
    func preferredFamily(for server: Endpoint) -> IPFamily? {
        winners.withLock { $0[server]?.family }
    }

    /// The address that last connected to `server`, for `--check --connect`.
    func lastAddress(for server: Endpoint) -> RaceAddress? {
        winners.withLock { $0[server] }
    }

    /// Notes that `address` connected to `server`.
    func remember(_ address: RaceAddress, for server: Endpoint) {
        winners.withLock { $0[server] = address }
    }

    /// Forgets every server's family: the network changed, what worked may not any more.
    func forget() {
        winners.withLock { $0.removeAll() }
    }
}
