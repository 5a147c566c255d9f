import Logging
import TunnelConfig

/// Runs the services of a configuration until told to stop.
public final class Daemon {
    let configuration: Configuration
    let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Listens on every service and serves clients; returns when the daemon stops.
    public func run() throws {
        logger.error("the tunnel is not written yet")
    }
}
