import ArgumentParser
import Foundation
import Logging
import TunnelConfig
import TunnelCore

/// The `tunneld` command: run the daemon, or check a configuration.
@main
struct Tunneld: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "tunneld",
        abstract: "An xinetd-style superserver for SSH tunnels.",
        discussion: """
            tunneld listens on the local ports its service stanzas name and carries each \
            accepted connection through an SSH direct-tcpip channel to the stanza's target, \
            sharing one SSH session per server among all connections.
            """,
        version: version
    )

    @Option(name: [.customShort("f"), .customLong("config")],
            help: ArgumentHelp("Configuration file or directory.", valueName: "path"))
    var path: String = "/etc/tunneld/services.d"

    @Flag(name: .customLong("check"),
          help: "Validate the configuration, print every problem and the services that would run, and exit (1 if any error).")
    var isCheck = false

    @Flag(name: .customLong("debug"), help: "Log at debug level.")
    var isDebug = false

    func run() throws {
        let loader = ConfigurationLoader(environment: .current)
        let configuration = loader.load(path: path)
        if isCheck {
            FileHandle.standardOutput.write(Data(CheckReport(configuration).render().utf8))
            if configuration.hasErrors { throw ExitCode(1) }
            return
        }
        try runDaemon(configuration: configuration)
    }

    private func runDaemon(configuration: Configuration) throws {
        let level: Logger.Level = isDebug ? .debug : Logger.Level(configurationName: configuration.globals.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = LineLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tunneld")
        for diagnostic in configuration.diagnostics {
            logger.log(level: diagnostic.severity == .error ? .error : .warning, "\(diagnostic)")
        }
        guard !configuration.services.isEmpty else {
            logger.error("no service to run; check the configuration with tunneld --check", metadata: ["config.path": "\(path)"])
            throw ExitCode(1)
        }
        let daemon = Daemon(
            configuration: configuration,
            reloadConfiguration: { [path] in ConfigurationLoader(environment: .current).load(path: path) },
            logger: logger)
        try daemon.run()
    }
}

extension Logger.Level {
    init?(configurationName: String?) {
        guard let name = configurationName?.lowercased(), let level = Logger.Level(rawValue: name) else { return nil }
        self = level
    }
}
