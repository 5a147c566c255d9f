import Glibc
import Platform
import TunnelConfig

/// The connection of a session that goes through a jump host: a socketpair, one end of which
/// the session speaks SSH over, while the other end is carried like a client over a
/// `direct-tcpip` channel of a session to the jump host (which the pool shares, lingers and
/// backs off like any other session).
final class JumpLink: Sendable {
    /// The session's end: connected, non-blocking; the session owns it.
    let socket: Int32
    /// The jump host the link goes through, as `user@host:port`.
    let jumpHost: String
    let server: Endpoint
    private let outcome = Outcome<ConnectionOutcome>()

    /// Opens a link to `server` through a session of `route`: returns at once, with the
    /// channel open under way; a session that writes meanwhile finds its bytes waiting in
    /// the socket until the channel takes them.
    static func open(to server: Endpoint, through route: Route, pool: SessionPool) throws -> JumpLink {
        var ends: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            let code = errno
            throw ConnectFailure(description: "cannot make a socket pair for the jump host \(route.login): \(String(cString: strerror(code)))",
                                 isLocalShortage: [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code))
        }
        Socket.setNonBlocking(ends[0])
        Socket.setNonBlocking(ends[1])
        let link = JumpLink(socket: ends[0], jumpHost: route.login, server: server)
        let ticket = ClientTicket(peer: Endpoint(host: "127.0.0.1", port: 0), service: carrierService(to: server, through: route), stats: ServiceStats()) { [link] outcome in
            link.outcome.set(outcome)
        }
        let carried = Connection(ticket: ticket, client: ClientEnd(socket: ends[1]))
        carried.stats.connectionStarted()
        pool.dispatch(carried)
        return link
    }

    private init(socket: Int32, jumpHost: String, server: Endpoint) {
        self.socket = socket
        self.jumpHost = jumpHost
        self.server = server
    }

    /// Why the jump host could not carry the link, as a sentence naming it, if it ended
    /// without success; waits up to `patience` for the jump side to say, since the session
    /// may see its end of the socketpair close first.
    func failure(waiting patience: Duration = .milliseconds(300)) -> String? {
        switch outcome.wait(upTo: patience) {
        case .sshFailed(let reason), .clientError(let reason):
            return "cannot reach \(server) through jump host \(jumpHost): \(reason)"
        case .refused(let reason):
            return "jump host \(jumpHost) could not open a channel to \(server): \(reason)"
        case .shutdown:
            return "cannot reach \(server) through jump host \(jumpHost): tunneld is stopping"
        case .ok, .limit, .access, nil:
            return nil
        }
    }

    /// The service a link poses as, so that the pool routes it to the jump host's sessions
    /// and the log line of its end says where it went.
    private static func carrierService(to server: Endpoint, through route: Route) -> Service {
        Service(
            name: "jump \(route.login)", location: SourceLocation(file: "jump", line: 0),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 0)),
            route: route, forwarding: Forwarding(target: server))
    }
}
