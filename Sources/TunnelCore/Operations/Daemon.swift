import FoundationEssentials
import Glibc
import Logging
import Platform
import TunnelConfig

/// Runs the services of a configuration: binds their sockets, serves clients, reloads on
/// SIGHUP and drains on SIGTERM or SIGINT.
public final class Daemon {
    private var configuration: Configuration
    private let reloadConfiguration: () -> Configuration
    private let logger: Logger
    private let systemd = SystemdNotifier()

    /// - `reloadConfiguration` reads the configuration again, for SIGHUP.
    public init(configuration: Configuration, reloadConfiguration: @escaping () -> Configuration, logger: Logger) {
        self.configuration = configuration
        self.reloadConfiguration = reloadConfiguration
        self.logger = logger
    }

    /// Listens on every service and serves clients; returns when the daemon has stopped.
    /// Throws only when no service could be started.
    public func run() throws {
        signal(SIGPIPE, SIG_IGN)
        // Before the connection bound reads it (ConnectionBudget): systemd's soft limit of 1024
        // would cap the daemon at about 900 connections.
        let descriptors = DescriptorLimit.raiseSoftToHard()
        logger.info("open-file limit set to the hard limit", metadata: ["nofile": "\(descriptors.after)", "nofile.before": "\(descriptors.before)"])
        var signals = sigset_t()
        sigemptyset(&signals)
        // USR1: reconnect; CONT: resumed after being stopped (frozen), so sessions are suspect.
        for number in [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGCONT] { sigaddset(&signals, number) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let activation = SocketActivation()
        activation.closeInheritedDescriptors()
        let endpoints = configuration.services.compactMap { service -> Listener.Endpoint? in
            let passed = activation.claim(for: service)
            if !passed.isEmpty {
                logger.info("listening on a socket from systemd", metadata: ["service": "\(service.name)", "listen": "\(service.listen)"])
                return Listener.Endpoint(fds: passed, service: service, stats: ServiceStats())
            }
            return bind(service, stats: ServiceStats())
        }
        for leftover in activation.closeUnclaimed() {
            logger.warning("a socket passed by systemd matches no service; closed", metadata: ["socket": "\(leftover)"])
        }
        guard !endpoints.isEmpty else {
            throw DaemonError(description: "no service could listen; see the errors above")
        }
        let controlPath = configuration.globals.controlSocket ?? ControlSocket.defaultPath()
        var account: (name: String, uid: uid_t, gid: gid_t)?
        if let name = configuration.globals.runAs {
            do {
                let (uid, gid) = try Privileges.ids(of: name)
                account = (name, uid, gid)
            } catch {
                for endpoint in endpoints { endpoint.fds.forEach { close($0) } }
                throw DaemonError(description: "\(error)")
            }
        }
        // The control socket is made before the switch to run_as, while /run/tunneld is still
        // writable and the socket can be given to run_as's group, so that root and that group
        // can both ask for status. It answers once the listener and pool below exist.
        var control: ControlSocket?
        do {
            control = try ControlSocket(path: controlPath, group: configuration.globals.controlGroup, owner: account?.uid)
        } catch {
            logger.warning("no control socket; tunneld status will not work", metadata: ["error": "\(error)"])
        }
        defer { control?.close() }
        // Metrics are bound before the switch too, so that a port below 1024 works.
        let metrics = configuration.globals.metricsPlace(group: configuration.globals.controlGroup, owner: account?.uid).flatMap { place in
            do {
                return try MetricsListener(place: place, allowed: configuration.globals.metricsOnlyFrom, logger: logger)
            } catch {
                logger.error("cannot serve metrics", metadata: ["listen": "\(place)", "error": "\(error)"])
                return nil
            }
        }
        defer { metrics?.close() }
        if let account {
            do {
                // The socket's directory stays root's: run_as never owns a place where root makes files.
                try Privileges.drop(to: account.name)
                logger.notice("switched to run_as account", metadata: ["run_as": "\(account.name)"])
            } catch {
                for endpoint in endpoints { endpoint.fds.forEach { close($0) } }
                throw DaemonError(description: "\(error)")
            }
        } else if geteuid() == 0 {
            logger.warning("running as root; set run_as in defaults to drop privileges after binding")
        }
        let watchdog = Watchdog()
        if let interval = watchdog.beatInterval {
            logger.info("systemd watchdog on: every event loop beats", metadata: ["beat.seconds": "\(interval)"])
        }
        let pool = SessionPool(services: endpoints.map(\.service), logger: logger, watchdog: watchdog)
        pool.startPersistentSessions()
        let budget = ConnectionBudget(limit: configuration.globals.maxConnections)
        logger.info("connection bound", metadata: ["max_connections": "\(budget.limit)"])
        let listener: Listener
        do {
            listener = try Listener(endpoints: endpoints, pool: pool, budget: budget, logger: logger)
        } catch {
            throw DaemonError(description: "cannot start accepting: \(error)")
        }
        listener.start()
        let watcher = NetworkWatcher { [logger] in
            logger.notice("the network changed; sessions whose route changed are probed and backoff starts over")
            pool.networkChanged()
        }
        if let problem = watcher.start() {
            logger.warning("network changes will not be noticed; use tunneld reconnect", metadata: ["error": "\(problem)"])
        }
        let startedAt = Date()
        control?.start { [logger] line in
            switch ControlRequest(parsing: line) {
            case .status(let format):
                let report = Self.status(listener: listener, pool: pool, startedAt: startedAt)
                switch format {
                case .table: return report.table()
                case .json: return report.json()
                case .prometheus: return report.prometheus()
                }
            case .reconnect(let names):
                return Self.reconnect(names: names, listener: listener, pool: pool, logger: logger)
            case nil:
                return ControlRequest.unknown(line)
            }
        }
        if let metrics {
            metrics.start { Self.status(listener: listener, pool: pool, startedAt: startedAt).prometheus() }
            logger.info("serving metrics", metadata: ["listen": "\(metrics.place)", "path": "/metrics"])
        }
        logger.notice("started", metadata: ["services": "\(endpoints.count)"])
        systemd.notify(["READY=1", "STATUS=\(statusLine(listener))"])

        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            if received == SIGUSR1 {
                _ = Self.reconnect(names: [], listener: listener, pool: pool, logger: logger)
                continue
            }
            if received == SIGCONT {
                logger.notice("resumed after being stopped; sessions are suspect")
                pool.machineWoke()
                continue
            }
            if received == SIGHUP {
                systemd.notify(["RELOADING=1", SystemdNotifier.monotonicMicroseconds()])
                reload(listener: listener, pool: pool)
                systemd.notify(["READY=1", "STATUS=\(statusLine(listener))"])
                continue
            }
            break
        }
        let drainSeconds = configuration.globals.shutdownTimeout
        systemd.notify(["STOPPING=1", "STATUS=stopping: letting live connections finish"])
        listener.stop()
        // Said once it is true: the listening sockets are closed.
        logger.notice("stopping", metadata: ["drain.seconds": "\(drainSeconds.secondsText)"])
        let deadline = ContinuousClock.now + Duration(seconds: drainSeconds)
        pool.stopAll(drainUntil: deadline)
        while pool.hasLiveLoops && ContinuousClock.now < deadline + .seconds(2) {
            usleep(10_000)
        }
        logger.notice("stopped")
    }

    /// What `tunneld status` shows now.
    static func status(listener: Listener, pool: SessionPool, startedAt: Date) -> StatusReport {
        let services = listener.currentEndpoints.map { endpoint -> StatusReport.ServiceStatus in
            let service = endpoint.service
            let counters = endpoint.stats.snapshot
            let server = pool.status(of: service.sessionKey)
            let probe = pool.health.result(for: service.name)
            return StatusReport.ServiceStatus(
                name: service.name, listen: "\(service.listen)", via: service.route.chain,
                target: "\(service.target)", session: server.state, sessionsUp: server.sessionsUp,
                sessionsStuck: server.sessionsStuck, sessionCapReached: server.isAtCap, opens: server.opens,
                retryAt: server.retryAt.map(StatusReport.timestamp),
                connectError: server.lastError, connectErrorAt: server.lastErrorAt.map(StatusReport.timestamp),
                liveConnections: counters.live, totalConnections: counters.total,
                bytesUp: counters.bytesUp, bytesDown: counters.bytesDown, refusals: counters.refusals,
                lastError: counters.lastError, lastErrorAt: counters.lastErrorAt.map(StatusReport.timestamp),
                results: counters.results, openLatency: counters.openLatency,
                sessionAgeSeconds: server.oldestSessionSeconds, connectFailures: server.connectFailures,
                probe: probe?.detail, probeAt: probe.map { StatusReport.timestamp($0.at) })
        }
        return StatusReport(pid: getpid(), startedAt: StatusReport.timestamp(startedAt), services: services.sorted { $0.name < $1.name })
    }

    /// `tunneld reconnect [SERVICE…]` and SIGUSR1: the sessions of the named services (all
    /// if none) are suspect, and their backoff starts over. Returns the answer for the client.
    static func reconnect(names: [String], listener: Listener, pool: SessionPool, logger: Logger) -> String {
        let services = listener.currentEndpoints.map(\.service)
        let unknown = names.filter { name in !services.contains { $0.name == name } }
        guard unknown.isEmpty else {
            return "error: no service named \(unknown.joined(separator: ", ")); tunneld status lists them\n"
        }
        let chosen = names.isEmpty ? [] : services.filter { names.contains($0.name) }
        if names.isEmpty { FamilyCache.shared.forget() }
        let servers = pool.reconnect(services: chosen)
        logger.notice("reconnect: sessions are suspect and backoff starts over", metadata: [
            "services": "\(names.isEmpty ? "all" : names.joined(separator: ","))",
        ])
        return "reconnecting \(servers) server\(servers == 1 ? "" : "s")\n"
    }

    /// The one-line summary systemd shows in `systemctl status`.
    private func statusLine(_ listener: Listener) -> String {
        let endpoints = listener.currentEndpoints
        let names = endpoints.map(\.service.name).sorted().joined(separator: ", ")
        return "serving \(endpoints.count) service\(endpoints.count == 1 ? "" : "s"): \(names)"
    }

    /// Opens the listening sockets of `service`, or logs why it cannot and returns nil. The
    /// first address must work; another (::1 beside 127.0.0.1 for localhost) may fail, e.g.
    /// on a machine without IPv6, with a warning.
    private func bind(_ service: Service, stats: ServiceStats, limits: ConnectionLimits? = nil) -> Listener.Endpoint? {
        do {
            var fds = [try Socket.listen(on: service.listen)]
            for address in service.alsoListen {
                do {
                    fds.append(try Socket.listen(on: address))
                } catch {
                    logger.warning("cannot also listen; clients that reach this address are refused", metadata: [
                        "service": "\(service.name)", "listen": "\(address)", "error": "\(error)",
                    ])
                }
            }
            logger.info("listening", metadata: [
                "service": "\(service.name)", "listen": "\(service.listenAddresses.map(\.description).joined(separator: ","))",
                "via": "\(service.route.chain)", "target": "\(service.target)",
            ])
            return Listener.Endpoint(fds: fds, service: service, stats: stats, limits: limits)
        } catch {
            var advice = ""
            if let error = error as? SocketError {
                if error.code == EACCES {
                    advice = geteuid() == 0 ? "" : "; ports below 1024 need root or CAP_NET_BIND_SERVICE (after run_as, restart tunneld to bind one)"
                }
                if error.code == EADDRINUSE { advice = "; another program listens there (see ss -ltnp)" }
            }
            logger.error("cannot listen; service not started", metadata: [
                "service": "\(service.name)", "listen": "\(service.listen)", "error": "\(error)\(advice)",
                "file": "\(service.location)",
            ])
            return nil
        }
    }

    /// Re-reads the configuration; with errors keeps everything as it is. Otherwise mark and
    /// sweep: unchanged services keep their sockets and connections, changed ones keep their
    /// socket unless the address changed, removed ones stop accepting while their live
    /// connections finish, new ones start.
    private func reload(listener: Listener, pool: SessionPool) {
        logger.notice("reloading")
        let next = reloadConfiguration()
        if next.hasErrorsBeyondRefusedFiles {
            for diagnostic in next.diagnostics where diagnostic.severity == .error {
                logger.error("\(diagnostic)")
            }
            logger.error("reload refused: the configuration has errors; still running the previous one")
            return
        }
        for diagnostic in next.diagnostics { logger.log(level: diagnostic.severity == .error ? .error : .warning, "\(diagnostic)") }

        let running = Dictionary(uniqueKeysWithValues: listener.currentEndpoints.map { ($0.service.name, $0) })
        let wanted = Dictionary(next.services.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var added = 0, changed = 0, unchanged = 0
        let removedNames = Set(running.keys).subtracting(wanted.keys)
        let moved = Set(running.compactMap { name, endpoint in
            wanted[name].map { $0.listenAddresses != endpoint.service.listenAddresses } == true ? name : nil
        })
        listener.remove(names: removedNames.union(moved))

        for service in next.services {
            guard let current = running[service.name] else {
                if let endpoint = bind(service, stats: ServiceStats()) {
                    listener.upsert(endpoint)
                    added += 1
                }
                continue
            }
            if Self.isSame(current.service, service) {
                listener.upsert(Listener.Endpoint(fds: current.fds, service: service, stats: current.stats, limits: current.limits))
                unchanged += 1
            } else if moved.contains(service.name) {
                if let endpoint = bind(service, stats: current.stats, limits: current.limits) { listener.upsert(endpoint) }
                changed += 1
            } else {
                listener.upsert(Listener.Endpoint(fds: current.fds, service: service, stats: current.stats, limits: current.limits))
                changed += 1
            }
        }
        pool.update(services: listener.currentEndpoints.map(\.service))
        configuration = next
        logger.notice("reloaded: \(added) added, \(changed) changed, \(removedNames.count) removed, \(unchanged) unchanged")
    }

    /// Whether two versions of a service behave the same (where they were written does not matter).
    static func isSame(_ a: Service, _ b: Service) -> Bool {
        var b = b
        b.location = a.location
        return a == b
    }
}

/// The daemon could not start.
public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
}
