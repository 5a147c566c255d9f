import Dispatch
import Glibc
import Logging
import Platform
import TunnelConfig

/// The accept loop: one thread waits in epoll for any service's listening socket to have
/// clients and hands each new client to the session pool. A pass costs the ready sockets, not
/// every socket: a socket's interest changes only when its service is paused (cps) or
/// resumed, all sockets pause at once (one nested set) while descriptors are exhausted, and
/// the set of sockets changes only on a reload (`upsert`, `remove`).
final class Listener: @unchecked Sendable {
    /// A bound, listening socket and the service it serves. The listener owns the socket.
    struct Endpoint {
        /// The listening sockets: one per address (127.0.0.1 and ::1 for localhost).
        let fds: [Int32]
        var service: Service
        let stats: ServiceStats
        let limits: ConnectionLimits

        init(fds: [Int32], service: Service, stats: ServiceStats, limits: ConnectionLimits? = nil) {
            self.fds = fds
            self.service = service
            self.stats = stats
            self.limits = limits ?? ConnectionLimits(service: service)
            self.limits.update(service)
            // Host names in access rules are resolved off the accept path, starting now.
            HostResolver.shared.prefetch(AccessControl(service: service).hostNames)
        }
    }

    private let pool: SessionPool
    private let budget: ConnectionBudget
    /// Where clients of SOCKS services go first, to name their target.
    private let socks: SocksGate
    private let logger: Logger
    private let wakeup: Wakeup
    /// What the thread waits on: the wake-up pipe and the set of listening sockets.
    private let events: EventPoll
    /// Every service's listening sockets, each with its descriptor as its token.
    private let sockets: EventPoll
    private let lock = Lock()
    private var endpoints: [Endpoint]
    /// Sockets the thread must close on its next pass, and who waits for that.
    private var closing: [Int32] = []
    private var closed = DispatchSemaphore(value: 0)
    private var isStopping = false
    private let finished = DispatchSemaphore(value: 0)

    init(endpoints: [Endpoint], pool: SessionPool, budget: ConnectionBudget, logger: Logger) throws {
        wakeup = try Wakeup()
        events = try EventPoll(capacity: 2)
        sockets = try EventPoll(capacity: 64)
        socks = try SocksGate(pool: pool, logger: logger)
        self.endpoints = endpoints
        self.pool = pool
        self.budget = budget
        self.logger = logger
    }

    func start() {
        socks.start()
        DetachedThread.start(name: "listener") { [self] in run() }
    }

    /// The endpoints being served now.
    var currentEndpoints: [Endpoint] {
        lock.lock()
        defer { lock.unlock() }
        return endpoints
    }

    /// Stops serving the endpoints of `names`, closing their sockets; returns once they are closed.
    func remove(names: Set<String>) {
        lock.lock()
        let removed = endpoints.filter { names.contains($0.service.name) }
        guard !removed.isEmpty else {
            lock.unlock()
            return
        }
        endpoints.removeAll { names.contains($0.service.name) }
        closing.append(contentsOf: removed.flatMap(\.fds))
        lock.unlock()
        wakeup.signal()
        closed.wait()
    }

    /// Serves `endpoint` too, or instead of the endpoint of the same name (keeping its socket).
    func upsert(_ endpoint: Endpoint) {
        lock.lock()
        if let index = endpoints.firstIndex(where: { $0.service.name == endpoint.service.name }) {
            endpoints[index] = endpoint
        } else {
            endpoints.append(endpoint)
        }
        lock.unlock()
        wakeup.signal()
    }

    /// Stops accepting and closes the listening sockets; returns once the thread is done.
    func stop() {
        lock.lock()
        isStopping = true
        lock.unlock()
        wakeup.signal()
        finished.wait()
    }

    /// The listener thread's own state: what is registered and what is paused. Only `run`
    /// and the functions it calls touch it.
    private struct Registry {
        /// The served endpoints by service name, as of the last reload.
        var served: [String: Endpoint] = [:]
        /// Each watched listening socket: its service and its registration in `sockets`.
        var watched: [Int32: (service: String, registration: EventPoll.Registration)] = [:]
        /// Services paused by their cps limit, and until when.
        var paused: [String: ContinuousClock.Instant] = [:]
        /// Until when every socket is paused because descriptors ran out.
        var exhaustedUntil: ContinuousClock.Instant?
        var wakeupRegistration = EventPoll.Registration()
        var socketsRegistration = EventPoll.Registration()
    }

    private static let wakeupToken: UInt64 = 0
    private static let socketsToken: UInt64 = 1

    private func run() {
        var registry = Registry()
        events.update(wakeup.readEnd, token: Self.wakeupToken, to: .readable, registration: &registry.wakeupRegistration)
        events.update(sockets.descriptor, token: Self.socketsToken, to: .readable, registration: &registry.socketsRegistration)
        // Running out of descriptors is logged once a minute at most: a flood must not flood the log too.
        var exhaustionLoggedAt: ContinuousClock.Instant?
        let beat = pool.watchdog?.join()
        defer { pool.watchdog?.leave(beat) }
        var isWoken = true
        var ready: [Int32] = []
        while true {
            pool.watchdog?.beat(beat)
            if isWoken {
                wakeup.drain()
                guard synchronize(&registry) else { break }
            }
            let now = ContinuousClock.now
            resumeEndedPauses(&registry, now: now)
            let wakeAt = ([registry.exhaustedUntil].compactMap { $0 } + registry.paused.values).min()
            let timeout = wakeAt.map { Socket.milliseconds(until: $0) } ?? -1
            isWoken = false
            var hasClients = false
            events.wait(timeout: pool.watchdog?.bound(timeout) ?? timeout) { event in
                if event.token == Self.wakeupToken { isWoken = true } else { hasClients = true }
            }
            // Changes first: a ready socket may belong to a service just removed.
            guard hasClients, !isWoken else { continue }
            ready.removeAll(keepingCapacity: true)
            sockets.wait(timeout: 0) { ready.append(Int32(truncatingIfNeeded: $0.token)) }
            for listening in ready {
                // A service paused in this pass (its other address was ready too) waits.
                guard let service = registry.watched[listening]?.service, let endpoint = registry.served[service],
                      registry.paused[service] == nil else { continue }
                do {
                    // A bounded batch per wake-up keeps one busy service from starving the others.
                    for _ in 0..<64 {
                        guard let (fd, peer) = try Socket.accept(from: listening) else { break }
                        admit(fd: fd, peer: peer, endpoint: endpoint)
                        // A service over its cps rate accepts nothing more until its pause ends.
                        if let until = endpoint.limits.pause() {
                            pause(service, until: until, &registry)
                            break
                        }
                    }
                } catch let error as SocketError where error.isLocalShortage {
                    if exhaustionLoggedAt.map({ ContinuousClock.now - $0 > .seconds(60) }) ?? true {
                        logger.error("accepting paused: out of file descriptors; live connections continue", metadata: [
                            "service": "\(service)", "error": "\(error)",
                        ])
                        exhaustionLoggedAt = .now
                    }
                    registry.exhaustedUntil = .now + .milliseconds(100)
                    events.update(sockets.descriptor, token: Self.socketsToken, to: [], registration: &registry.socketsRegistration)
                    break
                } catch {
                    logger.error("accept failed", metadata: ["service": "\(service)", "error": "\(error)"])
                }
            }
        }
        lock.lock()
        let remaining = endpoints
        endpoints.removeAll()
        lock.unlock()
        for endpoint in remaining {
            for fd in endpoint.fds {
                if var registration = registry.watched[fd]?.registration { sockets.remove(fd, registration: &registration) }
                close(fd)
            }
        }
        finished.signal()
    }

    /// Takes the endpoints and sockets to close from a reload: closes what was removed (and
    /// lets `remove` return), registers new sockets, drops gone ones, and takes the new
    /// service of each. Returns false when the listener is stopping. Costs the number of
    /// services, once per reload.
    private func synchronize(_ registry: inout Registry) -> Bool {
        lock.lock()
        let current = endpoints
        let toClose = closing
        closing.removeAll()
        let stopping = isStopping
        lock.unlock()
        if !toClose.isEmpty {
            for fd in toClose {
                if var registration = registry.watched.removeValue(forKey: fd)?.registration { sockets.remove(fd, registration: &registration) }
                close(fd)
            }
            closed.signal()
        }
        if stopping { return false }
        registry.served = Dictionary(current.map { ($0.service.name, $0) }, uniquingKeysWith: { _, last in last })
        registry.paused = registry.paused.filter { registry.served[$0.key] != nil }
        let now = ContinuousClock.now
        var kept: Set<Int32> = []
        for endpoint in current {
            let name = endpoint.service.name
            if let until = endpoint.limits.pause(at: now) { registry.paused[name] = until }
            let interest: EventPoll.Interest = registry.paused[name] == nil ? .readable : []
            for fd in endpoint.fds {
                kept.insert(fd)
                var registration = registry.watched[fd]?.registration ?? EventPoll.Registration()
                sockets.update(fd, token: Self.token(fd), to: interest, registration: &registration)
                registry.watched[fd] = (name, registration)
            }
        }
        for (fd, entry) in registry.watched where !kept.contains(fd) {
            var registration = entry.registration
            sockets.remove(fd, registration: &registration)
            registry.watched[fd] = nil
        }
        return true
    }

    private static func token(_ fd: Int32) -> UInt64 { UInt64(UInt32(bitPattern: fd)) }

    /// Stops waiting for `service`'s clients until `until` (its cps pause).
    private func pause(_ service: String, until: ContinuousClock.Instant, _ registry: inout Registry) {
        registry.paused[service] = until
        setInterest([], of: service, &registry)
    }

    /// Waits for clients again on what was paused and whose pause has ended by `now`.
    private func resumeEndedPauses(_ registry: inout Registry, now: ContinuousClock.Instant) {
        if let until = registry.exhaustedUntil, until <= now {
            registry.exhaustedUntil = nil
            events.update(sockets.descriptor, token: Self.socketsToken, to: .readable, registration: &registry.socketsRegistration)
        }
        for (service, until) in registry.paused where until <= now {
            registry.paused[service] = nil
            setInterest(.readable, of: service, &registry)
        }
    }

    private func setInterest(_ interest: EventPoll.Interest, of service: String, _ registry: inout Registry) {
        guard let endpoint = registry.served[service] else { return }
        for fd in endpoint.fds {
            guard var registration = registry.watched[fd]?.registration else { continue }
            sockets.update(fd, token: Self.token(fd), to: interest, registration: &registration)
            registry.watched[fd] = (service, registration)
        }
    }

    /// Applies the access rules and limits, then hands the client to its session.
    /// A refused client is closed at once, with its log line; it never causes an SSH connection.
    private func admit(fd: Int32, peer: TunnelConfig.Endpoint, endpoint: Endpoint) {
        endpoint.stats.connectionStarted()
        let ticket = ClientTicket(peer: peer, service: endpoint.service, stats: endpoint.stats)
        let refused = { (outcome: ConnectionOutcome) in Connection(ticket: ticket, client: ClientEnd(socket: fd)).finish(outcome, logger: self.logger) }
        if let rule = AccessControl(service: endpoint.service).refusal(for: peer.host) {
            refused(.access(rule))
            return
        }
        guard budget.take() else {
            refused(.limit(.maxConnections))
            return
        }
        if let limit = endpoint.limits.admit(source: peer.host) {
            budget.release()
            refused(.limit(limit))
            return
        }
        let limits = endpoint.limits
        let budget = budget
        let connection = Connection(ticket: ticket.finishing { _ in
            limits.release(source: peer.host)
            budget.release()
        }, client: ClientEnd(socket: fd))
        if endpoint.service.isSocks {
            socks.admit(connection)
        } else {
            pool.dispatch(connection)
        }
    }
}
