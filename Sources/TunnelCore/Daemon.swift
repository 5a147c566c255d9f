import Foundation
import Glibc
import Logging
import TunnelConfig

/// Runs the services of a configuration until SIGTERM or SIGINT.
public final class Daemon {
    let configuration: Configuration
    let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Listens on every service and serves clients; returns when the daemon stops.
    /// Throws only when no service could be started.
    public func run() throws {
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        for number in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, number) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        var endpoints: [Listener.Endpoint] = []
        for service in configuration.services {
            do {
                let fd = try Socket.listen(on: service.listen)
                endpoints.append(Listener.Endpoint(fd: fd, service: service, stats: ServiceStats()))
                logger.info("listening", metadata: [
                    "service": "\(service.name)", "listen": "\(service.listen)",
                    "via": "\(service.user)@\(service.server)", "target": "\(service.target)",
                ])
            } catch {
                logger.error("cannot listen; service not started", metadata: [
                    "service": "\(service.name)", "listen": "\(service.listen)", "error": "\(error)",
                    "file": "\(service.location)",
                ])
            }
        }
        guard !endpoints.isEmpty else {
            throw DaemonError(description: "no service could listen")
        }
        let pool = SessionPool(services: endpoints.map(\.service), logger: logger)
        pool.startPersistentSessions()
        let listener = Listener(endpoints: endpoints, pool: pool, logger: logger)
        listener.start()
        logger.notice("started", metadata: ["services": "\(endpoints.count)"])

        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            if received == SIGHUP {
                logger.warning("reload is not supported yet; restart tunneld to apply a new configuration")
                continue
            }
            break
        }
        logger.notice("stopping")
        listener.stop()
        pool.stopAll()
        let deadline = ContinuousClock.now + .seconds(5)
        while pool.hasLiveLoops && ContinuousClock.now < deadline {
            usleep(20_000)
        }
        logger.notice("stopped")
    }
}

/// The daemon could not start.
public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
}
