import Dispatch
import Glibc
import Logging
import Platform
import TunnelConfig

/// Carries one connection outside the daemon, through the same session code: standard input
/// and output for `--stdio`, or an empty probe for `--check --connect`.
public enum SingleConnection {
    /// Carries standard input and output through `service`'s tunnel until both directions
    /// end. Returns whether the connection ended cleanly.
    public static func runStdio(service: Service, logger: Logger) -> Bool {
        signal(SIGPIPE, SIG_IGN)
        let inputFlags = fcntl(0, F_GETFL)
        let outputFlags = fcntl(1, F_GETFL)
        _ = fcntl(0, F_SETFL, inputFlags | O_NONBLOCK)
        _ = fcntl(1, F_SETFL, outputFlags | O_NONBLOCK)
        defer {
            // Standard input and output may be shared with a shell: leave them as they were.
            _ = fcntl(0, F_SETFL, inputFlags)
            _ = fcntl(1, F_SETFL, outputFlags)
        }
        let outcome = carry(ClientEnd(input: dup(0), output: dup(1)), service: service, logger: logger)
        return outcome.isSuccess
    }

    /// Logs in to `service`'s server and opens its channel once, sending nothing. Returns
    /// nil when the channel opened, else why not (`refused: administratively prohibited`, ...).
    /// What the target sends (a banner) is read and dropped, up to 64 KiB.
    public static func probe(service: Service, logger: Logger) -> String? {
        // Past the 64 KiB, writes to the probe's end fail with EPIPE: that must not kill the process.
        signal(SIGPIPE, SIG_IGN)
        var ends: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0 else {
            return "socketpair: \(String(cString: strerror(errno)))"
        }
        Socket.setNonBlocking(ends[0])
        // The probe's own end says EOF at once: the channel opens, gets EOF, and closes when
        // the target does. A target that speaks first (SMTP, SIP2) gets its banner read.
        shutdown(ends[1], Int32(SHUT_WR))
        let probeEnd = ends[1]
        DetachedThread.start(name: "probe reader") {
            var buffer = [UInt8](repeating: 0, count: 4096)
            var total = 0
            while total < 64 * 1024 {
                let count = read(probeEnd, &buffer, buffer.count)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                total += count
            }
            close(probeEnd)
        }
        let outcome = carry(ClientEnd(socket: ends[0]), service: service, logger: logger)
        switch outcome {
        case .refused, .sshFailed: return "\(outcome)"
        // The channel opened; a client error is the target sending more than the probe reads.
        case .ok, .clientError, .shutdown, .limit, .access: return nil
        }
    }

    /// Which address of `service`'s first SSH server the last connect reached (the winner
    /// of its Happy Eyeballs race), for `--check --connect`: `connected to 192.0.2.1 (IPv4)`,
    /// or `jump host bastion:22 at 192.0.2.1 (IPv4)` through jump hosts. Nil if none has.
    public static func connectedAddress(of service: Service) -> String? {
        let first = service.route.jump.first?.server ?? service.server
        guard let address = FamilyCache.shared.lastAddress(for: first) else { return nil }
        let place = "\(address.host) (\(address.family))"
        return service.route.jump.isEmpty ? "connected to \(place)" : "jump host \(first) at \(place)"
    }

    private static func carry(_ client: ClientEnd, service: Service, logger: Logger) -> ConnectionOutcome {
        var oneShot = service
        oneShot.linger = 0
        oneShot.isPersistent = false
        // The process ends with this connection, before a refusal could be answered.
        oneShot.refusal = .none
        let pool = SessionPool(services: [oneShot], logger: logger)
        let done = DispatchSemaphore(value: 0)
        let result = Locked(ConnectionOutcome.shutdown)
        let ticket = ClientTicket(peer: Endpoint(host: "127.0.0.1", port: 0), service: oneShot, stats: ServiceStats()) { outcome in
            result.withLock { $0 = outcome }
            done.signal()
        }
        let connection = Connection(ticket: ticket, client: client)
        connection.stats.connectionStarted()
        pool.dispatch(connection)
        done.wait()
        let deadline = ContinuousClock.now + .seconds(2)
        pool.stopAll(drainUntil: deadline)
        while pool.hasLiveLoops && ContinuousClock.now < deadline {
            usleep(5_000)
        }
        return result.withLock { $0 }
    }
}
