import Foundation
import Glibc
import Logging
import TunnelConfig

/// The accept loop: one thread polls every service's listening socket and hands each new
/// client to the session pool. The set of sockets can change while it runs (reload).
final class Listener {
    /// A bound, listening socket and the service it serves. The listener owns the socket.
    struct Endpoint {
        let fd: Int32
        var service: Service
        let stats: ServiceStats
    }

    private let pool: SessionPool
    private let logger: Logger
    private let wakeup = Wakeup()
    private let lock = NSLock()
    private var endpoints: [Endpoint]
    /// Sockets the thread must close on its next pass, and who waits for that.
    private var closing: [Int32] = []
    private var closed = DispatchSemaphore(value: 0)
    private var isStopping = false
    private let finished = DispatchSemaphore(value: 0)

    init(endpoints: [Endpoint], pool: SessionPool, logger: Logger) {
        self.endpoints = endpoints
        self.pool = pool
        self.logger = logger
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "listener"
        thread.start()
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
        closing.append(contentsOf: removed.map(\.fd))
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
        var hasLoggedExhaustion = false
        while true {
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
            let isPaused = pausedUntil.map { $0 > .now } ?? false
            for endpoint in current {
                set.append(pollfd(fd: isPaused ? -1 : endpoint.fd, events: Int16(POLLIN), revents: 0))
            }
            _ = poll(&set, nfds_t(set.count), isPaused ? 100 : -1)
            if set[0].revents != 0 {
                wakeup.drain()
                continue
            }
            for (index, endpoint) in current.enumerated() where set[index + 1].revents != 0 {
                do {
                    // A bounded batch per wake-up keeps one busy service from starving the others.
                    for _ in 0..<64 {
                        guard let (fd, peer) = try Socket.accept(from: endpoint.fd) else { break }
                        hasLoggedExhaustion = false
                        admit(fd: fd, peer: peer, endpoint: endpoint)
                    }
                } catch let error as SocketError where [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.code) {
                    if !hasLoggedExhaustion {
                        logger.error("accepting paused: out of file descriptors; live connections continue", metadata: [
                            "service": "\(endpoint.service.name)", "error": "\(error)",
                        ])
                        hasLoggedExhaustion = true
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
        for endpoint in remaining { close(endpoint.fd) }
        finished.signal()
    }

    private func admit(fd: Int32, peer: TunnelConfig.Endpoint, endpoint: Endpoint) {
        endpoint.stats.connectionStarted()
        pool.dispatch(Connection(client: ClientEnd(socket: fd), peer: peer, service: endpoint.service, stats: endpoint.stats))
    }
}
