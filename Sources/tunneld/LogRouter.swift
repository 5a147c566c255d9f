import Glibc
import Logging
import Platform
import TunnelConfig

/// The log handler the whole process uses: sends each event to where its service's
/// `log_type` says (a line naming no service: the `log_type` of `defaults`), else to standard
/// error or the journal, and trims each service's `connection closed` line to its
/// `log_on_success` / `log_on_failure` fields.
struct LogRouter: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let routes: LogRoutes

    init(routes: LogRoutes) {
        self.routes = routes
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var event = event
        event.metadata = metadata.merging(event.metadata ?? [:]) { _, new in new }
        routes.dispatch(event)
    }
}

/// Where each service's lines go, set from the configuration at start and again on reload
/// (when log files are also reopened, for logrotate).
final class LogRoutes: @unchecked Sendable {
    private struct Route {
        var handler: any LogHandler
        var fields: LogFields
    }

    /// Standard error or the journal, as the environment says.
    private let standardError: any LogHandler
    private let syslogSocket: SyslogSocket
    private let lock = Lock()
    private var fallback: any LogHandler
    private var services: [String: Route] = [:]
    private var files: [String: LogFile] = [:]

    /// Routes with everything to `standardError` until `configure` is called.
    /// - `syslogSocketPath`: where `log_type = SYSLOG` sends (a test's socket instead of /dev/log).
    init(standardError: any LogHandler, syslogSocketPath: String = SyslogLogHandler.defaultSocketPath) {
        var handler = standardError
        handler.logLevel = .trace
        self.standardError = handler
        fallback = handler
        syslogSocket = SyslogSocket(path: syslogSocketPath)
    }

    /// Takes the configuration's `log_type`s and log fields. A log file that cannot be opened
    /// leaves that service's lines where they were, and is named in the returned problems.
    @discardableResult
    func configure(_ configuration: Configuration) -> [String] {
        var problems: [String] = []
        lock.lock()
        let oldFiles = files
        lock.unlock()
        var newFiles: [String: LogFile] = [:]
        func handler(for logType: LogType?) -> (any LogHandler)? {
            switch logType {
            case nil: return nil
            case .syslog(let facility, let level):
                return SyslogLogHandler(label: "tunneld", socket: syslogSocket, facility: facility, infoLevel: level)
            case .file(let path, let soft, let hard):
                if let file = newFiles[path] ?? oldFiles[path], file.softLimit == soft, file.hardLimit == hard {
                    newFiles[path] = file
                    return FileLogHandler(label: "tunneld", file: file)
                }
                do {
                    let standardError = self.standardError
                    let file = try LogFile(path: path, softLimit: soft, hardLimit: hard) { notice in
                        standardError.log(event: LogEvent(level: .warning, message: "\(notice)", metadata: [:], source: "tunneld", file: #fileID, function: #function, line: #line))
                    }
                    newFiles[path] = file
                    return FileLogHandler(label: "tunneld", file: file)
                } catch {
                    problems.append("\(error)")
                    return nil
                }
            }
        }
        let fallback = handler(for: configuration.globals.logType) ?? standardError
        var services: [String: Route] = [:]
        for service in configuration.services {
            services[service.name] = Route(handler: handler(for: service.logType) ?? fallback, fields: service.logFields)
        }
        lock.lock()
        self.fallback = fallback
        self.services = services
        files = newFiles
        lock.unlock()
        return problems
    }

    /// Reopens every log file at its path (after logrotate); returns what could not be reopened.
    func reopenFiles() -> [String] {
        lock.lock()
        let current = Array(files.values)
        lock.unlock()
        return current.compactMap { $0.reopen() }
    }

    /// Sends `event` (its metadata already merged) where its service's lines go.
    func dispatch(_ event: LogEvent) {
        let name = event.metadata?["service"].map { "\($0)" }
        lock.lock()
        let route = name.flatMap { services[$0] }
        let target = route?.handler ?? fallback
        lock.unlock()
        var event = event
        if let route, "\(event.message)" == ConnectionLineFields.message {
            guard let kept = ConnectionLineFields.select(event.metadata ?? [:], fields: route.fields) else { return }
            event.metadata = kept
        }
        target.log(event: event)
    }
}
