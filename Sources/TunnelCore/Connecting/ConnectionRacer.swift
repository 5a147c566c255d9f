import Glibc
import TunnelConfig

/// Connects to an SSH server by a Happy Eyeballs race: looks up its AAAA and A addresses on
/// lookup threads, and carries out `HappyEyeballs`' decisions over non-blocking sockets with
/// poll, on the calling thread, until one connects or the deadline passes.
struct ConnectionRacer {
    /// The server, as a name or a numeric address.
    let server: Endpoint
    /// The families it may be reached over.
    let addressFamily: AddressFamily
    /// Which family last worked, per server.
    var cache = FamilyCache.shared

    /// A race that ended without a connection.
    enum Failure: Error {
        /// No address connected: each one tried and why, and each failed lookup.
        case noConnection(RaceFailure)
        /// This machine ran out of descriptors or memory: not the server's fault.
        case localShortage(SocketError)
    }

    /// The families to race, preferred first: the one that last worked, else IPv6.
    var families: [IPFamily] {
        switch addressFamily {
        case .ipv4: return [.ipv4]
        case .ipv6: return [.ipv6]
        case .any:
            let preferred = cache.preferredFamily(for: server) ?? .ipv6
            return [preferred, preferred.other]
        }
    }

    /// A connected non-blocking socket with `TCP_NODELAY`, and the address it reached; or
    /// throws `Failure`. Nothing started here outlives the call but lookups, whose late
    /// answers are dropped.
    func connect(by deadline: ContinuousClock.Instant) throws(Failure) -> (fd: Int32, address: RaceAddress) {
        let families = self.families
        let literal = IPFamily(literal: server.host)
        // A numeric address needs no lookup: the race is over its one family.
        let raced = literal.map { families.contains($0) ? [$0] : families } ?? families
        var race = HappyEyeballs(families: raced, deadline: deadline)
        var attempts: [RaceAddress: Int32] = [:]
        func closeAll() {
            for fd in attempts.values { close(fd) }
            attempts = [:]
        }
        let mailbox: LookupMailbox
        do {
            mailbox = try LookupMailbox()
        } catch {
            throw .localShortage(error as? SocketError ?? SocketError("pipe", code: EMFILE))
        }
        var actions: [HappyEyeballs.Action] = []
        let now = ContinuousClock.now
        if let family = literal {
            for wanted in raced {
                actions += wanted == family
                    ? race.answered(family, addresses: [RaceAddress(host: server.host, family: family)], at: now)
                    : race.lookupFailed(wanted, reason: "it is an \(family) address, and only \(wanted) is allowed (flags, AddressFamily)", at: now)
            }
        } else {
            for family in families {
                if let problem = AddressLookup.start(host: server.host, family: family, into: mailbox) {
                    actions += race.lookupFailed(family, reason: problem, at: now)
                }
            }
        }
        while true {
            var events: [(RaceAddress, SocketError?)] = []
            for action in actions {
                switch action {
                case .attempt(let address):
                    do {
                        let (fd, isConnected) = try Socket.startConnect(to: address.host, port: server.port)
                        attempts[address] = fd
                        if isConnected { events.append((address, nil)) }
                    } catch let error where error.isLocalShortage {
                        closeAll()
                        throw .localShortage(error)
                    } catch {
                        events.append((address, error))
                    }
                case .abandon(let address):
                    if let fd = attempts.removeValue(forKey: address) { close(fd) }
                case .connected(let address):
                    let fd = attempts.removeValue(forKey: address)!
                    closeAll()
                    Socket.setNoDelay(fd)
                    cache.remember(address, from: Socket.localEndpoint(of: fd)?.host, for: server)
                    return (fd, address)
                case .failed(let failure):
                    closeAll()
                    throw .noConnection(failure)
                }
            }
            actions = []
            if !events.isEmpty {
                let now = ContinuousClock.now
                for (address, error) in events {
                    actions += error.map { race.attemptFailed(address, reason: Self.reason($0.code), at: now) }
                        ?? race.attemptConnected(address, at: now)
                }
                continue
            }
            actions = waitForEvents(&race, attempts: attempts, mailbox: mailbox)
        }
    }

    /// Polls the mailbox and the attempts until something happens or the race's next wake,
    /// and tells the race what did.
    private func waitForEvents(_ race: inout HappyEyeballs, attempts: [RaceAddress: Int32], mailbox: LookupMailbox) -> [HappyEyeballs.Action] {
        let racing = Array(attempts)
        var descriptors = [pollfd(fd: mailbox.descriptor, events: Int16(POLLIN), revents: 0)]
            + racing.map { pollfd(fd: $0.value, events: Int16(POLLOUT), revents: 0) }
        let wake = race.nextWake ?? .now
        let ready = poll(&descriptors, nfds_t(descriptors.count), Socket.milliseconds(until: wake))
        let now = ContinuousClock.now
        var actions: [HappyEyeballs.Action] = []
        if ready > 0 {
            if descriptors[0].revents != 0 {
                for answer in mailbox.take() {
                    switch answer.result {
                    case .success(let addresses): actions += race.answered(answer.family, addresses: addresses, at: now)
                    case .failure(let error): actions += race.lookupFailed(answer.family, reason: error.description, at: now)
                    }
                }
            }
            for (index, attempt) in racing.enumerated() where descriptors[index + 1].revents != 0 {
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(attempt.value, SOL_SOCKET, SO_ERROR, &error, &length)
                actions += error == 0 && descriptors[index + 1].revents & Int16(POLLOUT) != 0
                    ? race.attemptConnected(attempt.key, at: now)
                    : race.attemptFailed(attempt.key, reason: Self.reason(error == 0 ? ECONNREFUSED : error), at: now)
            }
        }
        return actions + race.tick(at: now)
    }

    /// How a connect failed, in a few words: `refused`, `timed out`, `network unreachable`, ….
    static func reason(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return "refused"
        case ETIMEDOUT: return "timed out"
        case ENETUNREACH: return "network unreachable"
        case EHOSTUNREACH: return "host unreachable"
        default: return String(cString: strerror(code)).lowercased()
        }
    }
}
