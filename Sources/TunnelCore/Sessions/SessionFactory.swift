import Logging

/// Sets up authenticated SSH sessions: the daemon's factory connects over TCP or through a
/// jump host's link; tests give a fake that returns scripted sessions.
protocol SessionFactory: Sendable {
    /// An authenticated session for `settings.key`, set up within its connect timeout, or
    /// throws `ConnectFailure` saying what went wrong. Runs on the session's own thread.
    func connect(_ settings: SessionSettings, logger: Logger) throws -> any TunnelSession
}

/// The daemon's sessions: libssh2 over TCP, or over a link through the jump host's sessions
/// of `pool`.
struct SSHSessionFactory: SessionFactory {
    /// The pool whose sessions to jump hosts carry links.
    unowned let pool: SessionPool

    func connect(_ settings: SessionSettings, logger: Logger) throws -> any TunnelSession {
        try SessionConnector(key: settings.key, connectTimeout: settings.connectTimeout, logger: logger, jumpPool: pool).connect()
    }
}
