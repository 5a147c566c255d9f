import XCTest
import Logging
import Foundation
@testable import TunnelCore
import TunnelConfig

final class ScratchTests: XCTestCase {
    func testManualDaemon() throws {
        guard ProcessInfo.processInfo.environment["SCRATCH"] != nil else { return }
        let service = Service(
            name: "echo", location: SourceLocation(file: "x", line: 1),
            listen: Endpoint(host: "127.0.0.1", port: 22224),
            server: Endpoint(host: "127.0.0.1", port: 22222), user: "root",
            target: Endpoint(host: "127.0.0.1", port: 22223),
            identities: ["/tmp/m/id_ed25519"], knownHosts: ["/tmp/m/known_hosts"],
            linger: 3, keepalive: Keepalive(interval: 2, count: 2))
        var logger = Logger(label: "t")
        logger.logLevel = .debug
        let daemon = Daemon(configuration: Configuration(services: [service]), reloadConfiguration: { Configuration(services: [service]) }, logger: logger)
        try daemon.run()
    }
}
