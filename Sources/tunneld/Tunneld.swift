import ArgumentParser
import FoundationEssentials
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
        version: version,
        subcommands: [Status.self, Reconnect.self]
    )

    @Option(name: [.customShort("f"), .customLong("config")],
            help: ArgumentHelp("Configuration file or directory.", valueName: "path"))
    var path: String = "/etc/tunneld/services.d"

    @Flag(name: .customLong("check"),
          help: "Validate the configuration, print every problem and the services that would run, and exit (1 if any error).")
    var isCheck = false

    @Flag(name: .customLong("connect"),
          help: "With --check: also log in to each service's server and open its channel once, reporting refusals.")
    var isConnectCheck = false

    @Option(name: .customLong("stdio"),
            help: ArgumentHelp("Carry one connection on standard input and output through the service's tunnel, then exit (for ProxyCommand or inetd).", valueName: "service"))
    var stdioService: String?

    @Flag(name: .customLong("debug"), help: "Log at debug level.")
    var isDebug = false

    func validate() throws {
        if isConnectCheck && !isCheck { throw ValidationError("--connect goes with --check.") }
        if isCheck && stdioService != nil { throw ValidationError("--check and --stdio cannot be used together.") }
    }

    func run() throws {
        let loader = ConfigurationLoader(environment: .daemon)
        let configuration = loader.load(path: path)
        if isCheck {
            StandardStreams.write(CheckReport(configuration).render(), to: 1)
            var failed = configuration.hasErrors
            if isConnectCheck {
                failed = !checkConnections(configuration) || failed
            }
            if failed { throw ExitCode(1) }
            return
        }
        let (logger, logRoutes) = bootstrapLogging(configuration)
        if let name = stdioService {
            guard let service = configuration.services.first(where: { $0.name == name }) else {
                logger.error("no such service (or it has errors, or is disabled); see tunneld --check", metadata: ["service": "\(name)", "config.path": "\(path)"])
                throw ExitCode(1)
            }
            if service.isSocks {
                logger.error("a SOCKS service has no target of its own; --stdio needs a service with server_args", metadata: ["service": "\(name)"])
                throw ExitCode(1)
            }
            throw ExitCode(SingleConnection.runStdio(service: service, logger: logger) ? 0 : 1)
        }
        try runDaemon(configuration: configuration, logger: logger, logRoutes: logRoutes)
    }

    /// Opens every service's channel once; prints one line per service. Returns whether all opened.
    private func checkConnections(_ configuration: Configuration) -> Bool {
        // A check writes to no log file and no syslog: only to standard error (or the journal).
        let (logger, _) = bootstrapLogging(configuration, isRouted: false)
        var allOpened = true
        for service in configuration.services {
            if service.isSocks {
                print("\(service.name): SOCKS service; its clients name the targets, so no channel was opened")
                continue
            }
            if let problem = SingleConnection.probe(service: service, logger: logger) {
                print("\(service.location): error: \(service.name): cannot reach \(service.target) via \(service.user)@\(service.server): \(problem)")
                allOpened = false
            } else {
                let address = SingleConnection.connectedAddress(of: service).map { "; \($0)" } ?? ""
                print("\(service.name): channel to \(service.target) via \(service.user)@\(service.server) opened\(address)")
            }
        }
        return allOpened
    }

    /// Sends the log where the environment (journal or standard error) and, when `isRouted`,
    /// the `log_type`s say.
    private func bootstrapLogging(_ configuration: Configuration, isRouted: Bool = true) -> (Logger, LogRoutes) {
        let level: Logger.Level = isDebug ? .debug : Logger.Level(configurationName: configuration.globals.logLevel) ?? .info
        let destination = LogDestination.forStandardError(environment: ProcessInfo.processInfo.environment)
        let routes = LogRoutes(standardError: destination.handler(label: "tunneld"))
        let problems = isRouted ? routes.configure(configuration) : []
        LoggingSystem.bootstrap { _ in
            var handler = LogRouter(routes: routes)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tunneld")
        for problem in problems { logger.error("\(problem)") }
        return (logger, routes)
    }

    private func runDaemon(configuration: Configuration, logger: Logger, logRoutes: LogRoutes) throws {
        for diagnostic in configuration.diagnostics {
            logger.log(level: diagnostic.severity == .error ? .error : .warning, "\(diagnostic)")
        }
        guard !configuration.services.isEmpty else {
            logger.error("no service to run; check the configuration with tunneld --check", metadata: ["config.path": "\(path)"])
            throw ExitCode(1)
        }
        let daemon = Daemon(
            configuration: configuration,
            reloadConfiguration: { [path] in
                // SIGHUP: log files are reopened (logrotate moved them), then routed anew.
                let next = ConfigurationLoader(environment: .daemon).load(path: path)
                var problems = logRoutes.reopenFiles()
                if !next.hasErrors { problems += logRoutes.configure(next) }
                for problem in problems { logger.error("\(problem)") }
                return next
            },
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

/// `tunneld status [--json]`: asks the running daemon over its control socket.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the running daemon's services, sessions and counters.")

    @Flag(name: .customLong("json"), help: "Print JSON instead of a table (same as --format json).")
    var isJSON = false

    @Option(name: .customLong("format"), help: ArgumentHelp("table, json, or prometheus (the text exposition format, for a scraper or node_exporter's textfile collector).", valueName: "format"))
    var format: StatusClient.Format?

    @Option(name: .customLong("socket"), help: ArgumentHelp("The control socket (default: control_socket from the configuration, else the platform default).", valueName: "path"))
    var socketPath: String?

    @Option(name: [.customShort("f"), .customLong("config")], help: ArgumentHelp("Configuration to read control_socket from.", valueName: "path"))
    var path: String = "/etc/tunneld/services.d"

    func validate() throws {
        if isJSON && format != nil && format != .json {
            throw ValidationError("--json and --format \(format!.rawValue) disagree; give one of them")
        }
    }

    func run() throws {
        var socket = socketPath
        if socket == nil, FileManager.default.fileExists(atPath: path) {
            socket = ConfigurationLoader(environment: .daemon).load(path: path).globals.controlSocket
        }
        do {
            print(try StatusClient.fetch(format: format ?? (isJSON ? .json : .table), socketPath: socket), terminator: "")
        } catch {
            StandardStreams.write("tunneld status: \(error)\n", to: 2)
            throw ExitCode(1)
        }
    }
}

/// `tunneld reconnect [SERVICE…]`: after a sleep or a network change, tells the running
/// daemon that its sessions may be dead, so clients get fresh ones at once.
struct Reconnect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Treat the sessions of the running daemon as suspect and start backoff over (after a wake-up or a network change).")

    @Argument(help: ArgumentHelp("Services whose sessions to check (default: all).", valueName: "service"))
    var services: [String] = []

    @Option(name: .customLong("socket"), help: ArgumentHelp("The control socket (default: control_socket from the configuration, else the platform default).", valueName: "path"))
    var socketPath: String?

    @Option(name: [.customShort("f"), .customLong("config")], help: ArgumentHelp("Configuration to read control_socket from.", valueName: "path"))
    var path: String = "/etc/tunneld/services.d"

    func run() throws {
        var socket = socketPath
        if socket == nil, FileManager.default.fileExists(atPath: path) {
            socket = ConfigurationLoader(environment: .daemon).load(path: path).globals.controlSocket
        }
        let answer: String
        do {
            answer = try StatusClient.reconnect(services: services, socketPath: socket)
        } catch {
            StandardStreams.write("tunneld reconnect: \(error)\n", to: 2)
            throw ExitCode(1)
        }
        if answer.hasPrefix("error:") {
            StandardStreams.write("tunneld reconnect: \(answer.dropFirst(7))", to: 2)
            throw ExitCode(1)
        }
        print(answer, terminator: "")
    }
}

extension StatusClient.Format: ExpressibleByArgument {}
