import CLibSSH2

extension SSHSession {
    /// Tries every identity the ssh-agent at `socketPath` holds. Returns `true` once one is
    /// accepted, `false` when the agent has none the server takes. Agent socket I/O blocks;
    /// the server side is driven until `deadline`.
    public func authenticateWithAgent(user: String, socketPath: String, by deadline: ContinuousClock.Instant) throws -> Bool {
        guard let agent = libssh2_agent_init(raw) else {
            throw error(LIBSSH2_ERROR_ALLOC, "libssh2_agent_init")
        }
        defer { libssh2_agent_free(agent) }
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
}
