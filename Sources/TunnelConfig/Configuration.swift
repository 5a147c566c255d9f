import Glibc

/// Everything read from a configuration path: the services to run, the global settings,
/// and every problem found on the way.
public struct Configuration: Sendable {
    /// Services that are enabled and free of errors, in the order they were written.
    public var services: [Service]
    /// Names of services turned off with `disable = yes`, with where they were written.
    public var disabledServices: [(name: String, location: SourceLocation)]
    /// Settings from `defaults { }` that apply to the daemon as a whole.
    public var globals: GlobalSettings
    /// Errors and warnings, in the order they were found.
    public var diagnostics: [Diagnostic]
    /// Files of a directory that were skipped by name (editor backups, package leftovers).
    public var skippedFiles: [String]

    public init(
        services: [Service] = [], disabledServices: [(name: String, location: SourceLocation)] = [],
        globals: GlobalSettings = GlobalSettings(), diagnostics: [Diagnostic] = [],
        skippedFiles: [String] = []
    ) {
        self.services = services
        self.disabledServices = disabledServices
        self.globals = globals
        self.diagnostics = diagnostics
        self.skippedFiles = skippedFiles
    }

    /// Whether any diagnostic is an error.
    public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }

    /// Whether any error is more than a refused file: a reload skips files it cannot trust
    /// and loads the others, as a start does, but refuses a configuration with other errors.
    public var hasErrorsBeyondRefusedFiles: Bool {
        diagnostics.contains { $0.severity == .error && !$0.refusesFile }
    }
}

/// Settings that only make sense once per daemon; they live in `defaults { }`.
public struct GlobalSettings: Sendable, Equatable {
    /// Path of the control socket; `nil` means the platform default.
    public var controlSocket: String?
    /// Group that gets the control socket (and a metrics socket), mode 0660: `control_group`,
    /// else run_as's primary group when no other account has it; nil: mode 0600, root's alone.
    public var controlGroup: gid_t?
    /// Account to switch to after binding, when started as root.
    public var runAs: String?
    /// Log level name (`trace`, `debug`, `info`, `notice`, `warning`, `error`).
    public var logLevel: String?
    /// Seconds live connections get to finish on SIGTERM.
    public var shutdownTimeout: Double
    /// Most live connections of all services together; `nil`: derived from the descriptor limit.
    public var maxConnections: Int?
    /// Where to serve Prometheus metrics over HTTP (`metrics = [HOST:]PORT`), if anywhere.
    public var metrics: Endpoint?
    /// Where to serve them on a Unix socket instead (`metrics = unix:PATH`), if there.
    public var metricsSocket: String?
    /// Who besides loopback clients may read the metrics: the `only_from` of `defaults`.
    public var metricsOnlyFrom: [AddressMatch] = []
    /// Where lines that name no service go: the `log_type` of `defaults`, if any.
    public var logType: LogType?

    public init(
        controlSocket: String? = nil, runAs: String? = nil, logLevel: String? = nil,
        shutdownTimeout: Double = 10, maxConnections: Int? = nil
    ) {
        self.maxConnections = maxConnections
        self.controlSocket = controlSocket
        self.runAs = runAs
        self.logLevel = logLevel
        self.shutdownTimeout = shutdownTimeout
    }
}

/// One problem in the configuration, printed as `FILE:LINE: error: SERVICE: what; what to do`.
public struct Diagnostic: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }

    public var severity: Severity
    /// Where the problem is; `nil` for problems with no place (an unreadable path given with -f).
    public var location: SourceLocation?
    /// The service the problem belongs to, if any.
    public var service: String?
    /// What is wrong and what to do, as one sentence.
    public var message: String
    /// Whether the error is a file refused because another account could write it: the
    /// file is skipped and the others are used.
    public var refusesFile: Bool

    public init(_ severity: Severity, at location: SourceLocation?, service: String? = nil, _ message: String, refusesFile: Bool = false) {
        self.refusesFile = refusesFile
        self.severity = severity
        self.location = location
        self.service = service
        self.message = message
    }

    public var description: String {
        var line = ""
        if let location { line += "\(location): " }
        line += "\(severity.rawValue): "
        if let service { line += "\(service): " }
        return line + message
    }
}
