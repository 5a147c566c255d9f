import CLibSSH2

/// One `direct-tcpip` channel of a session. Used only from the session's thread.
public final class SSHChannel {
    let raw: OpaquePointer
    /// Kept alive by its channels: libssh2 frees a channel through its session.
    let session: SSHSession
    private var isFreed = false

    init(raw: OpaquePointer, session: SSHSession) {
        self.raw = raw
        self.session = session
    }

    deinit {
        if !isFreed { libssh2_channel_free(raw) }
    }

    /// What a read from the channel gave.
    public enum ReadResult {
        case bytes(Int)
        case wouldBlock
        case endOfFile
    }

    /// Reads into `buffer` what the server has sent, growing the window by what was taken.
    /// A zero-length buffer only processes what arrived on the session (for all channels).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> ReadResult {
        let count = libssh2_channel_read_ex(raw, 0, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
        if count > 0 { return .bytes(count) }
        if count == Int(LIBSSH2_ERROR_EAGAIN) { return .wouldBlock }
        if count < 0 { throw session.error(Int32(count), "libssh2_channel_read_ex") }
        return libssh2_channel_eof(raw) != 0 ? .endOfFile : .wouldBlock
    }

    /// Whether libssh2 already holds data or an EOF for this channel, taken in while another
    /// call read the session: polling the socket will not announce it.
    public var hasBufferedInput: Bool {
        var available: UInt = 0
        _ = libssh2_channel_window_read_ex(raw, &available, nil)
        return available > 0 || libssh2_channel_eof(raw) != 0
    }

    /// Makes libssh2 read and file every packet that has arrived for the session (a read of
    /// no bytes: libssh2 processes all pending input before it looks at this channel's data).
    public func fileArrivedPackets() throws {
        var byte: CChar = 0
        let count = libssh2_channel_read_ex(raw, 0, &byte, 0)
        if count < 0 && count != Int(LIBSSH2_ERROR_EAGAIN) { throw session.error(Int32(count), "libssh2_channel_read_ex") }
    }

    /// Whether the server's window has room, so a write would not be refused.
    public var canWrite: Bool {
        libssh2_channel_window_write_ex(raw, nil) > 0
    }

    /// Sends up to one packet of `bytes`. Returns how many were taken, or `nil` while the
    /// server's window is closed.
    public func write(_ bytes: UnsafeRawBufferPointer) throws -> Int? {
        let count = libssh2_channel_write_ex(raw, 0, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        if count > 0 { return count }
        if count == Int(LIBSSH2_ERROR_EAGAIN) || count == 0 { return nil }
        throw session.error(Int32(count), "libssh2_channel_write_ex")
    }

    /// Tells the server no more data follows (half-close). Returns `nil` while it would block.
    public func sendEOF() throws -> Void? {
        try session.check(libssh2_channel_send_eof(raw), "libssh2_channel_send_eof")
    }

    /// Closes and frees the channel. Returns `false` while the server's close has not
    /// arrived yet; call again when the session has news. Errors mean the session is gone,
    /// so the channel is freed then too.
    public func free() -> Bool {
        guard !isFreed else { return true }
        let code = libssh2_channel_free(raw)
        if code == LIBSSH2_ERROR_EAGAIN { return false }
        isFreed = true
        return true
    }
}
