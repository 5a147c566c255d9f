import Dispatch
import Glibc
import Logging
import Platform
import TunnelConfig

/// The accept loop: one thread polls every service's listening socket and hands each new
/// client to the session pool. The set of sockets can change while it runs (reload).
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
    private let lock = Lock()
    private var endpoints: [Endpoint]
    /// Sockets the thread must close on its next pass, and who waits for that.
    private var closing: [Int32] = []
    private var closed = DispatchSemaphore(value: 0)
    private var isStopping = false
    private let finished = DispatchSemaphore(value: 0)

    init(endpoints: [Endpoint], pool: SessionPool, budget: ConnectionBudget, logger: Logger) throws {
        wakeup = try Wakeup()
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

    private func run() {
        var pausedUntil: ContinuousClock.Instant?
        // Running out of descriptors is logged once a minute at most: a flood must not flood the log too.
        var exhaustionLoggedAt: ContinuousClock.Instant?
        let beat = pool.watchdog?.join()
        defer { pool.watchdog?.leave(beat) }
        while true {
            pool.watchdog?.beat(beat)
            lock.lock()
            let current = endpoints
            let toClose = closing
            closing.removeAll()
            let stopping = isStopping
            lock.unlock()
            if !toClose.isEmpty {
                for fd in toClose { close(fd) }
                closed.signal()
            }
            if stopping { break }

            var set = [pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)]
            let now = ContinuousClock.now
            let isPaused = pausedUntil.map { $0 > now } ?? false
            var wakeAt = isPaused ? pausedUntil : nil
            /// The endpoint and socket of each entry of `set` after the wake-up pipe.
            var polled: [(endpoint: Endpoint, fd: Int32)] = []
            for endpoint in current {
                // A service over its cps rate is not polled until its pause ends.
                let servicePause = endpoint.limits.pause(at: now)
                if let servicePause { wakeAt = min(wakeAt ?? servicePause, servicePause) }
                for fd in endpoint.fds {
                    set.append(pollfd(fd: isPaused || servicePause != nil ? -1 : fd, events: Int16(POLLIN), revents: 0))
                    polled.append((endpoint, fd))
                }
            }
            let timeout = wakeAt.map { Socket.milliseconds(until: $0) } ?? -1
            _ = poll(&set, nfds_t(set.count), pool.watchdog?.bound(timeout) ?? timeout)
            if set[0].revents != 0 {
                wakeup.drain()
                continue
            }
            for (index, (endpoint, listening)) in polled.enumerated() where set[index + 1].revents != 0 {
                do {
                    // A bounded batch per wake-up keeps one busy service from starving the others.
                    for _ in 0..<64 {
                        guard let (fd, peer) = try Socket.accept(from: listening) else { break }
                        admit(fd: fd, peer: peer, endpoint: endpoint)
                    }
                } catch let error as SocketError where [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.code) {
                    if exhaustionLoggedAt.map({ ContinuousClock.now - $0 > .seconds(60) }) ?? true {
                        logger.error("accepting paused: out of file descriptors; live connections continue", metadata: [
                            "service": "\(endpoint.service.name)", "error": "\(error)",
                        ])
                        exhaustionLoggedAt = .now
                    }
                    pausedUntil = .now + .milliseconds(100)
                } catch {
                    logger.error("accept failed", metadata: ["service": "\(endpoint.service.name)", "error": "\(error)"])
                }
            }
        }
        lock.lock()
        let remaining = endpoints
        endpoints.removeAll()
        lock.unlock()
        for endpoint in remaining { endpoint.fds.forEach { close($0) } }
        finished.signal()
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
