import Glibc
import SSHTransport
import TunnelConfig

/// The SSH session as the runtime uses it: `SSHSession` in the daemon, a scripted fake in
/// tests. One thread at a time; every call that talks to the server returns `nil` for
/// "would block" and throws when the session itself failed.
protocol TunnelSession: AnyObject {
    /// The socket to the server, to poll for `pollEvents`.
    var socket: Int32 { get }
    /// `POLLIN`, plus `POLLOUT` while output waits.
    var pollEvents: Int16 { get }
    /// Bytes produced for the server that the socket has not taken yet.
    var pendingOutputCount: Int { get }
    /// When bytes last arrived from the server.
    var lastReceived: ContinuousClock.Instant { get }
    /// Bytes received from the server so far: while it does not change, libssh2 holds
    /// nothing new for any channel.
    var receivedCount: Int { get }
    /// Whether the server closed the connection.
    var isPeerClosed: Bool { get }

    /// Sends what the socket takes of the waiting output.
    func flush() throws
    /// Opens a `direct-tcpip` channel; throws `ChannelOpenFailure` when only this open failed.
    func openChannel(to target: Endpoint, from originator: Endpoint, window: UInt32) throws -> (any TunnelChannel)?
    /// A channel open the server refuses at once: its answer proves the server alive.
    func probe() throws -> Void?
    /// A global request the server answers, for when a channel open is under way.
    func sendKeepalive() throws
    /// Over a jump host, sends the server something after a small read that left nothing to
    /// send, so that its next small packet is not held for an acknowledgement (Nagle).
    func acknowledgeReads() throws
    /// Cuts the connection to a server that is gone, so freeing channels does not wait.
    func abandon()
    /// Says goodbye, as far as the socket takes it without blocking.
    func disconnect(reason: String)
}

/// One channel of a `TunnelSession`.
protocol TunnelChannel: AnyObject {
    /// Reads what the server sent, growing the window by what was taken.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> SSHChannel.ReadResult
    /// Sends up to one packet; `nil` while the server's window is closed.
    func write(_ bytes: UnsafeRawBufferPointer) throws -> Int?
    /// Half-close; `nil` while it would block.
    func sendEOF() throws -> Void?
    /// Closes and frees; `false` while the server's close has not arrived.
    func free() -> Bool
    /// Whether data or EOF already waits in libssh2, which polling will not announce.
    var hasBufferedInput: Bool { get }
    /// Whether the server's window has room.
    var canWrite: Bool { get }
    /// Makes libssh2 file every packet that has arrived, for any channel, without taking
    /// any: afterwards `hasBufferedInput` sees them all.
    func fileArrivedPackets() throws
}

extension SSHSession: TunnelSession {
    func openChannel(to target: Endpoint, from originator: Endpoint, window: UInt32) throws -> (any TunnelChannel)? {
        try openDirectTCPIP(host: target.host, port: target.port, originatorHost: originator.host, originatorPort: originator.port, window: window)
    }
}

extension SSHChannel: TunnelChannel {}
