import Foundation
import Glibc
import Logging
import TunnelConfig

/// The accept loop: one thread polls every service's listening socket and hands each new
/// client to the session pool.
final class Listener {
    /// A bound, listening socket and the service it serves.
    struct Endpoint {
        let fd: Int32
        let service: Service
        let stats: ServiceStats
    }

    private let endpoints: [Endpoint]
    private let pool: SessionPool
    private let logger: Logger
    private let wakeup = Wakeup()
    private let lock = NSLock()
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

    /// Stops accepting and closes the listening sockets; returns once the thread is done.
    func stop() {
        lock.lock()
        isStopping = true
        lock.unlock()
        wakeup.signal()
        finished.wait()
    }

    private var shouldStop: Bool {
        lock.lock()
        defer { lock.unlock() }
        return isStopping
    }

    private func run() {
        var pausedUntil: ContinuousClock.Instant?
        var hasLoggedExhaustion = false
        while !shouldStop {
            var set = [pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)]
            let isPaused = pausedUntil.map { $0 > .now } ?? false
            for endpoint in endpoints {
                set.append(pollfd(fd: isPaused ? -1 : endpoint.fd, events: Int16(POLLIN), revents: 0))
            }
            _ = poll(&set, nfds_t(set.count), isPaused ? 100 : -1)
            if set[0].revents != 0 { wakeup.drain() }
            for (index, endpoint) in endpoints.enumerated() where set[index + 1].revents != 0 {
                do {
                    // A bounded batch per wake-up keeps one busy service from starving the others.
                    for _ in 0..<64 {
                        guard let (fd, peer) = try Socket.accept(from: endpoint.fd) else { break }
                        hasLoggedExhaustion = false
                        endpoint.stats.connectionStarted()
                        pool.dispatch(Connection(client: ClientEnd(socket: fd), peer: peer, service: endpoint.service, stats: endpoint.stats))
                    }
                } catch let error as SocketError where error.code == EMFILE || error.code == ENFILE || error.code == ENOBUFS || error.code == ENOMEM {
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
        for endpoint in endpoints { close(endpoint.fd) }
        finished.signal()
    }
}
