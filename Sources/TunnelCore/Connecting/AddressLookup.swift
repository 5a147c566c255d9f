import Glibc
import Platform

/// Looks up one family's addresses of a host name (getaddrinfo with AF_INET6 or AF_INET) on a
/// short-lived thread of its own, so that a resolver that hangs holds no session thread: the
/// caller waits on the mailbox only until its deadline, and an answer that comes later is
/// dropped with the mailbox. At most `maxPending` lookups may be outstanding at once; past
/// that, a lookup fails at once instead of leaving another thread stuck.
enum AddressLookup {
    /// How many lookups may wait for the resolver at once, in the whole process.
    static let maxPending = 32

    /// How many lookups are outstanding now (a count tests may read).
    static let pending = Locked(0)

    /// One family's answer: numeric addresses in the resolver's order, or why there are none.
    typealias Answer = (family: IPFamily, result: Result<[RaceAddress], LookupError>)

    /// Why a lookup found no address, in the resolver's words.
    struct LookupError: Error, Sendable, CustomStringConvertible {
        var description: String
    }

    /// Starts looking up `family`'s addresses of `host`; the answer goes to `mailbox`.
    /// Returns why it could not start (too many lookups stuck, no thread), or nil.
    static func start(host: String, family: IPFamily, into mailbox: LookupMailbox) -> String? {
        let admitted = pending.withLock { count -> Bool in
            guard count < maxPending else { return false }
            count += 1
            return true
        }
        guard admitted else { return "\(maxPending) earlier lookups are still waiting for the resolver" }
        let started = DetachedThread.start(name: "lookup") {
            let result = resolve(host: host, family: family)
            pending.withLock { $0 -= 1 }
            mailbox.deliver((family, result))
        }
        if !started {
            pending.withLock { $0 -= 1 }
            return "cannot start a thread to look it up"
        }
        return nil
    }

    /// `host`'s `family` addresses, blocking: getaddrinfo with `AI_ADDRCONFIG`, so a family
    /// this machine has no address of yields none. Duplicates are dropped, order kept.
    static func resolve(host: String, family: IPFamily) -> Result<[RaceAddress], LookupError> {
        var hints = addrinfo()
        hints.ai_family = family == .ipv6 ? AF_INET6 : AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        guard status == 0, let list else {
            return .failure(LookupError(description: String(cString: gai_strerror(status))))
        }
        defer { freeaddrinfo(list) }
        var addresses: [RaceAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let info = entry {
            entry = info.pointee.ai_next
            guard let socketAddress = info.pointee.ai_addr, info.pointee.ai_family == hints.ai_family else { continue }
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) {
                $0.copyMemory(from: UnsafeRawBufferPointer(start: socketAddress, count: min(Int(info.pointee.ai_addrlen), $0.count)))
            }
            let address = RaceAddress(host: Socket.endpoint(of: storage).host, family: family)
            if !addresses.contains(address) { addresses.append(address) }
        }
        return addresses.isEmpty ? .failure(LookupError(description: "no address")) : .success(addresses)
    }
}

/// Where lookup threads leave their answers for one race: a queue under a lock and a wake-up
/// pipe the race polls. It lives as long as its last holder (the race or a late lookup
/// thread), so a late answer never writes to a descriptor someone else has been given.
final class LookupMailbox: Sendable {
    /// Readable when answers are waiting.
    var descriptor: Int32 { wakeup.readEnd }
    private let wakeup: Wakeup
    private let answers = Locked<[AddressLookup.Answer]>([])

    init() throws {
        wakeup = try Wakeup()
    }

    /// Leaves an answer and wakes the race.
    func deliver(_ answer: AddressLookup.Answer) {
        answers.withLock { $0.append(answer) }
        wakeup.signal()
    }

    /// Takes the answers left so far.
    func take() -> [AddressLookup.Answer] {
        wakeup.drain()
        return answers.withLock { answers in
            defer { answers = [] }
            return answers
        }
    }
}
