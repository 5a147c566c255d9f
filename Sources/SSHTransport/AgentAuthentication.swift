import CLibSSH2
import Glibc

extension SSHSession {
    /// Tries every identity the ssh-agent at `socketPath` holds. Returns `true` once one is
    /// accepted, `false` when the agent has none the server takes. Agent socket I/O blocks;
    /// the server side is driven until `deadline`.
    public func authenticateWithAgent(user: String, socketPath: String, by deadline: ContinuousClock.Instant) throws -> Bool {
        guard let agent = libssh2_agent_init(raw) else {
            throw error(LIBSSH2_ERROR_ALLOC, "libssh2_agent_init")
        }
        defer { libssh2_agent_free(agent) }
        // libssh2 talks to the agent with blocking I/O and no timeout: make sure it answers first.
        let remaining = deadline - .now
        let bound = min(Duration.seconds(2), max(remaining, .milliseconds(100)))
        guard Self.agentAnswers(at: socketPath, within: bound) else {
            throw SSHError(code: LIBSSH2_ERROR_AGENT_PROTOCOL, message: "the ssh-agent at \(socketPath) did not answer within \(bound.components.seconds > 0 ? "\(bound.components.seconds) s" : "a moment"); is it stopped?", function: "ssh-agent")
        }
        libssh2_agent_set_identity_path(agent, socketPath)
        guard libssh2_agent_connect(agent) == 0 else {
            throw SSHError(code: LIBSSH2_ERROR_AGENT_PROTOCOL, message: "cannot reach the ssh-agent at \(socketPath)", function: "libssh2_agent_connect")
        }
        defer { libssh2_agent_disconnect(agent) }
        guard libssh2_agent_list_identities(agent) == 0 else {
            throw SSHError(code: LIBSSH2_ERROR_AGENT_PROTOCOL, message: "the ssh-agent at \(socketPath) did not list its keys", function: "libssh2_agent_list_identities")
        }
        var previous: UnsafeMutablePointer<libssh2_agent_publickey>?
        while true {
            var identity: UnsafeMutablePointer<libssh2_agent_publickey>?
            guard libssh2_agent_get_identity(agent, &identity, previous) == 0, let identity else { return false }
            previous = identity
            let accepted: Bool = try complete("agent authentication", by: deadline) {
                let code = libssh2_agent_userauth(agent, user, identity)
                if code == 0 { return true }
                if code == LIBSSH2_ERROR_EAGAIN { return nil }
                if code == LIBSSH2_ERROR_SOCKET_SEND || code == LIBSSH2_ERROR_SOCKET_RECV || code == LIBSSH2_ERROR_SOCKET_DISCONNECT {
                    throw error(code, "libssh2_agent_userauth")
                }
                return false
            }
            if accepted { return true }
        }
    }

    /// Whether the agent at `path` answers a request for its identities within `bound`
    /// (SSH_AGENTC_REQUEST_IDENTITIES; any reply will do).
    static func agentAnswers(at path: String, within bound: Duration) -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        var timeout = timeval(tv_sec: Int(bound.components.seconds), tv_usec: Int(bound.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { return false }
        let request: [UInt8] = [0, 0, 0, 1, 11]
        guard Glibc.send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { return false }
        var header = [UInt8](repeating: 0, count: 5)
        return Glibc.recv(fd, &header, header.count, Int32(MSG_WAITALL)) == header.count
    }
}
