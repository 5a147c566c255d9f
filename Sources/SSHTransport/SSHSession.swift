import CLibSSH2
import Glibc

/// One SSH connection, driven non-blocking by the event loop that owns it.
///
/// A session and its channels must be used from one thread at a time. Every method that talks
/// to the server either finishes, throws `SSHError`, or returns `nil` for "would block": the
/// caller then polls `socket` for `pollEvents` and calls again with the same arguments.
public final class SSHSession {
    /// The connected TCP socket to the server. The session closes it.
    public let socket: Int32
    /// When bytes last arrived from the server.
    public private(set) var lastReceived = ContinuousClock.now
    /// Bytes received from the server so far.
    public private(set) var receivedCount = 0
    /// Whether the server closed the TCP connection.
    public private(set) var isPeerClosed = false

    let raw: OpaquePointer
    private var outgoing = OutgoingBuffer()
    private var sendError: Int32?
    /// Whether `socket` is TCP (not a link through a jump host), which quick ACKs apply to.
    private let isTCP: Bool
    /// Bytes that arrived since tunneld last sent the server anything.
    private var bytesSinceSend = 0
    /// Reads up to this size are acknowledged over a jump host (`acknowledgeReads`); bulk
    /// transfers, whose packets are full size, need no help.
    static let acknowledgedReadLimit = 16 * 1024
    /// The password a keyboard-interactive login under way answers with.
    var keyboardInteractive: KeyboardInteractiveState?

    /// Wraps a connected, non-blocking socket. The session owns the socket from here on.
    public init(socket: Int32) throws {
        SSHLibrary.initialize()
        self.socket = socket
        var family = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &family) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) } }
        isTCP = named == 0 && (family.ss_family == sa_family_t(AF_INET) || family.ss_family == sa_family_t(AF_INET6))
        guard let created = libssh2_session_init_ex(nil, nil, nil, nil) else {
            Glibc.close(socket)
            throw SSHError(code: LIBSSH2_ERROR_ALLOC, message: "libssh2 could not allocate a session", function: "libssh2_session_init_ex")
        }
        raw = created
        // The callbacks find `self` through libssh2's abstract pointer.
        libssh2_session_abstract(raw).pointee = Unmanaged.passUnretained(self).toOpaque()
        libssh2_session_callback_set(raw, LIBSSH2_CALLBACK_SEND, unsafeBitCast(sessionSend, to: UnsafeMutableRawPointer.self))
        libssh2_session_callback_set(raw, LIBSSH2_CALLBACK_RECV, unsafeBitCast(sessionReceive, to: UnsafeMutableRawPointer.self))
        libssh2_session_set_blocking(raw, 0)
        libssh2_session_flag(raw, LIBSSH2_FLAG_SIGPIPE, 0)
    }

    deinit {
        // With the socket shut, every libssh2 call that waits for the server fails at once
        // instead of saying "would block", so the session and its channels are really freed.
        Glibc.shutdown(socket, Int32(SHUT_RDWR))
        libssh2_session_free(raw)
        Glibc.close(socket)
    }

    /// Cuts the TCP connection to a server that is gone or unresponsive, so that freeing its
    /// channels does not wait for answers that will not come.
    public func abandon() {
        Glibc.shutdown(socket, Int32(SHUT_RDWR))
    }

    // MARK: Transport

    /// Bytes produced by libssh2 that the socket has not taken yet.
    public var pendingOutputCount: Int { outgoing.count }

    /// The `poll` events the session needs: `POLLIN` always, `POLLOUT` while output waits.
    public var pollEvents: Int16 {
        Int16(POLLIN) | (outgoing.isEmpty ? 0 : Int16(POLLOUT))
    }

    /// Sends what the socket takes of the waiting output.
    public func flush() throws {
        if let error = sendError ?? outgoing.flush(to: socket) {
            sendError = error
            throw SSHError(code: LIBSSH2_ERROR_SOCKET_SEND, message: "connection to the server failed: \(String(cString: strerror(error)))", function: "send")
        }
    }

    fileprivate func transportSend(_ buffer: UnsafeRawPointer, _ length: Int) -> Int {
        if let sendError { return -Int(sendError) }
        bytesSinceSend = 0
        var offset = 0
        if outgoing.isEmpty {
            let (sent, error) = OutgoingBuffer.send(socket, buffer, length)
            if let error {
                sendError = error
                return -Int(error)
            }
            offset = sent
        }
        if offset < length {
            outgoing.append(UnsafeRawBufferPointer(start: buffer + offset, count: length - offset))
        }
        return length
    }

    fileprivate func transportReceive(_ buffer: UnsafeMutableRawPointer, _ length: Int) -> Int {
        while true {
            let received = Glibc.recv(socket, buffer, length, 0)
            if received > 0 {
                lastReceived = .now
                receivedCount &+= received
                bytesSinceSend += received
                acknowledgeQuickly()
                return received
            }
            if received == 0 {
                isPeerClosed = true
                return 0
            }
            if errno == EINTR { continue }
            if errno != EAGAIN && errno != EWOULDBLOCK { isPeerClosed = true }
            return -Int(errno)
        }
    }

    /// Asks the kernel to acknowledge what arrives at once instead of delaying the ACK by up
    /// to 40 ms. Without it, a server that speaks first stalls every new connection: sshd
    /// sends the channel open confirmation and then the target's banner as two small packets,
    /// and Nagle holds the second until the first is acknowledged. Linux drops quick-ACK mode
    /// on its own, so this is re-armed after every read.
    private func acknowledgeQuickly() {
        guard isTCP else { return }
        var on: Int32 = 1
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_QUICKACK, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Runs `step` until it stops saying "would block", polling the socket in between, or
    /// throws a timeout naming `what` once `deadline` passes. For the connect phase only:
    /// it blocks the calling thread.
    public func complete<T>(_ what: String, by deadline: ContinuousClock.Instant, _ step: () throws -> T?) throws -> T {
        while true {
            try flush()
            if let result = try step() { return result }
            try flush()
            let now = ContinuousClock.now
            guard now < deadline else {
                throw SSHError(code: LIBSSH2_ERROR_TIMEOUT, message: "timed out during \(what)", function: what)
            }
            var events = Int16(0)
            let directions = libssh2_session_block_directions(raw)
            if directions & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int16(POLLIN) }
            if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 || pendingOutputCount > 0 { events |= Int16(POLLOUT) }
            if events == 0 { events = Int16(POLLIN) }
            var descriptor = pollfd(fd: socket, events: events, revents: 0)
            let remaining = deadline - now
            let milliseconds = Int32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
            _ = poll(&descriptor, 1, milliseconds)
        }
    }

    // MARK: Errors

    /// libssh2's text for the last failure.
    func lastErrorMessage() -> String {
        var message: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        libssh2_session_last_error(raw, &message, &length, 0)
        guard let message else { return "unknown error" }
        return String(cString: message)
    }

    /// Turns a negative libssh2 return code into "would block" (`nil`) or a thrown error.
    func check(_ code: Int32, _ function: String) throws -> Void? {
        if code == 0 { return () }
        if code == LIBSSH2_ERROR_EAGAIN { return nil }
        throw error(code, function)
    }

    func error(_ code: Int32, _ function: String) -> SSHError {
        var message = lastErrorMessage()
        if let sendError {
            message = "connection to the server failed: \(String(cString: strerror(sendError)))"
        } else if isPeerClosed {
            message = "the server closed the connection"
        }
        return SSHError(code: code, message: message, function: function)
    }

    // MARK: Handshake and host key

    /// Sets the host key algorithms to offer, most preferred first (e.g. those known_hosts holds).
    public func preferHostKeyAlgorithms(_ algorithms: [String]) {
        guard !algorithms.isEmpty else { return }
        _ = libssh2_session_method_pref(raw, LIBSSH2_METHOD_HOSTKEY, algorithms.joined(separator: ","))
    }

    /// Exchanges banners and keys. Returns `nil` while it would block.
    public func handshake() throws -> Void? {
        try check(libssh2_session_handshake(raw, socket), "libssh2_session_handshake")
    }

    /// The server's host key, available after the handshake.
    public func hostKey() throws -> HostKey {
        var length = 0
        var type: Int32 = 0
        guard let blob = libssh2_session_hostkey(raw, &length, &type) else {
            throw error(LIBSSH2_ERROR_HOSTKEY_INIT, "libssh2_session_hostkey")
        }
        let bytes = [UInt8](UnsafeRawBufferPointer(start: blob, count: length))
        return HostKey(algorithm: HostKey.algorithmName(libssh2Type: type), blob: bytes)
    }

    // MARK: Authentication

    /// Logs in with a private key file (the public half is derived from it).
    /// Returns `nil` while it would block; throws when the server refuses the key.
    public func authenticate(user: String, privateKeyFile: String, passphrase: String?) throws -> Void? {
        let code = libssh2_userauth_publickey_fromfile_ex(raw, user, UInt32(user.utf8.count), nil, privateKeyFile, passphrase)
        return try check(code, "libssh2_userauth_publickey_fromfile_ex")
    }

    // MARK: Channels

    /// Asks for a `direct-tcpip` channel to `target` with `originator` as the client address.
    /// Returns `nil` while it would block. Only one open may be under way per session.
    /// Throws `ChannelOpenFailure` when only this open failed (the session is fine), and
    /// `SSHError` when the session failed.
    public func openDirectTCPIP(host: String, port: UInt16, originatorHost: String, originatorPort: UInt16, window: UInt32) throws -> SSHChannel? {
        var message: [UInt8] = []
        func appendString(_ string: String) {
            appendUInt32(UInt32(string.utf8.count))
            message.append(contentsOf: string.utf8)
        }
        func appendUInt32(_ value: UInt32) {
            message.append(contentsOf: [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)])
        }
        appendString(host)
        appendUInt32(UInt32(port))
        appendString(originatorHost)
        appendUInt32(UInt32(originatorPort))
        let type = "direct-tcpip"
        let channel = message.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                libssh2_channel_open_ex(raw, type, UInt32(type.utf8.count), window, 32768, chars.baseAddress, UInt32(chars.count))
            }
        }
        if let channel { return SSHChannel(raw: channel, session: self) }
        let code = libssh2_session_last_errno(raw)
        if code == LIBSSH2_ERROR_EAGAIN { return nil }
        if code == LIBSSH2_ERROR_CHANNEL_FAILURE {
            throw ChannelOpenFailure.refused(reason: Self.openFailureReason(lastErrorMessage()))
        }
        if code == LIBSSH2_ERROR_TIMEOUT && !isPeerClosed && sendError == nil {
            throw ChannelOpenFailure.unanswered
        }
        throw error(code, "libssh2_channel_open_ex")
    }

    /// Over a jump host, what quick ACKs do on TCP (`acknowledgeQuickly`): when a few bytes
    /// arrived and tunneld had nothing to send back, it sends a global request the server
    /// does not answer. Without it, a server that speaks first (SMTP) would stall 40 ms on
    /// most new channels: the server's sshd sends two small packets in a row (the open
    /// confirmation and the target's first bytes; or the close of the previous channel and
    /// the confirmation) to the jump host's sshd, and Nagle holds the second until the first
    /// is acknowledged, which the jump host's kernel delays while it has nothing to send
    /// back. The request is something to send back: the acknowledgement rides on it.
    /// Call it at the end of each pass of the event loop, after the channels were served.
    public func acknowledgeReads() throws {
        guard !isTCP, (1...Self.acknowledgedReadLimit).contains(bytesSinceSend) else { return }
        try sendGlobalRequest(wantsReply: false)
    }

    /// Sends a global request that the server answers at once (OpenSSH says "failure"), to
    /// learn that it is alive while a channel open is under way and a probe cannot be sent.
    /// It is sent every time it is asked for (a probe that libssh2 silently skipped would
    /// make a live session look dead). The answers are not consumed and stay in libssh2's
    /// packet list, so use it sparingly.
    public func sendKeepalive() throws {
        try sendGlobalRequest(wantsReply: true)
    }

    /// `keepalive@libssh2.org`, now. libssh2 1.10 sends at most one such request per
    /// keepalive interval, and its interval is an `int`, in which UInt32.max reads as -1, so
    /// the "interval passed" test holds at once. (Were the arithmetic unsigned, nothing would
    /// be sent: a probe would go unanswered and the over-a-jump-host stall would come back.)
    private func sendGlobalRequest(wantsReply: Bool) throws {
        libssh2_keepalive_config(raw, wantsReply ? 1 : 0, UInt32.max)
        var next: Int32 = 0
        let code = libssh2_keepalive_send(raw, &next)
        if code != 0 && code != LIBSSH2_ERROR_EAGAIN { throw error(code, "libssh2_keepalive_send") }
    }

    /// Sends a channel open the server is sure to refuse, to learn that it is alive and to
    /// process what it sent meanwhile. Returns `nil` while the answer has not arrived;
    /// throws only when the session itself failed.
    public func probe() throws -> Void? {
        let type = "keepalive@tunneld"
        if let channel = libssh2_channel_open_ex(raw, type, UInt32(type.utf8.count), 32768, 32768, nil, 0) {
            libssh2_channel_free(channel)
            return ()
        }
        let code = libssh2_session_last_errno(raw)
        if code == LIBSSH2_ERROR_EAGAIN { return nil }
        if code == LIBSSH2_ERROR_CHANNEL_FAILURE { return () }
        throw error(code, "libssh2_channel_open_ex")
    }

    /// libssh2 reports a refused open as "Channel open failure (administratively prohibited)";
    /// keep the words in parentheses.
    static func openFailureReason(_ message: String) -> String {
        guard let open = message.firstIndex(of: "("), let close = message.lastIndex(of: ")"), open < close else {
            return message
        }
        return String(message[message.index(after: open)..<close])
    }

    // MARK: Teardown

    /// Says goodbye to the server, as far as the socket takes it without blocking.
    public func disconnect(reason: String) {
        _ = libssh2_session_disconnect_ex(raw, SSH_DISCONNECT_BY_APPLICATION, reason, "")
        try? flush()
    }
}

/// The libssh2 send callback: hands the bytes to the session's outgoing buffer. libssh2 1.10
/// also sends its ssh-agent requests through this callback, on the agent's socket: those go
/// straight to that socket, with a timeout, so that a hung agent fails instead of blocking.
private let sessionSend: @convention(c) (libssh2_socket_t, UnsafeRawPointer?, Int, Int32, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int = {
    socket, buffer, length, flags, abstract in
    let session = Unmanaged<SSHSession>.fromOpaque(abstract!.pointee!).takeUnretainedValue()
    guard socket == session.socket else { return AgentSocket.call(socket) { Glibc.send(socket, buffer, length, flags | Int32(MSG_NOSIGNAL)) } }
    return session.transportSend(buffer!, length)
}

/// The libssh2 receive callback: reads the socket and notes when bytes arrived (the agent's
/// socket as `sessionSend` says).
private let sessionReceive: @convention(c) (libssh2_socket_t, UnsafeMutableRawPointer?, Int, Int32, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int = {
    socket, buffer, length, flags, abstract in
    let session = Unmanaged<SSHSession>.fromOpaque(abstract!.pointee!).takeUnretainedValue()
    guard socket == session.socket else { return AgentSocket.call(socket) { Glibc.recv(socket, buffer, length, flags) } }
    return session.transportReceive(buffer!, length)
}

/// The ssh-agent's socket, which libssh2 opens blocking and without a timeout.
enum AgentSocket {
    /// How long one read or write to the agent may block.
    static let timeout = timeval(tv_sec: 5, tv_usec: 0)

    /// A send or recv on the agent's socket `fd`, bounded by `timeout`, retried on EINTR,
    /// returning -errno on failure as libssh2 expects of a callback.
    static func call(_ fd: Int32, _ operation: () -> Int) -> Int {
        var value = timeout
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        while true {
            let result = operation()
            if result >= 0 { return result }
            if errno == EINTR { continue }
            return -Int(errno)
        }
    }
}
