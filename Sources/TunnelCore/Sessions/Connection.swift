import Glibc
import Logging
import Platform
import TunnelConfig

/// One client and, once opened, its channel: the state of both copy directions.
///
/// Who the client is, and where it goes, is its `ticket`, which nobody rewrites. The rest is
/// the state of its tunnel, touched only by the thread that owns the connection: the listener
/// (or the SOCKS gate) that accepted it, then the session it was handed to, whose loop alone
/// pumps it. Its client descriptors are closed exactly once, by `finish`, or handed on whole
/// by `handOver`; after either the connection holds no descriptor at all, so no later call can
/// touch a number the kernel may have given to another client.
///
/// Bytes move through the loop's scratch buffer; only what the receiving side refused stays
/// here (`toServer`, `toClient`), and while it does, that direction reads nothing more. So a
/// connection holds at most one read's worth of bytes per direction.
final class Connection: @unchecked Sendable {
    let ticket: ClientTicket
    var peer: Endpoint { ticket.peer }
    var service: Service { ticket.service }
    var stats: ServiceStats { ticket.stats }
    var acceptedAt: ContinuousClock.Instant { ticket.acceptedAt }
    var target: Endpoint { ticket.target }

    // The session's own state of the client (its loop's thread alone writes it).

    /// Whether this client was already moved once from a session that died under it.
    var isRetry = false
    /// When the client's channel open must have been answered (set by the first session
    /// that queues it; moving never extends it).
    var openDeadline: ContinuousClock.Instant?
    /// A SOCKS client still waits for the reply to its CONNECT.
    private(set) var isSocksReplyOwed: Bool

    var channel: (any TunnelChannel)? {
        didSet { if channel != nil { hadChannel = true } }
    }
    /// Whether a channel was ever opened for it: bytes may have flowed, so an end other than
    /// a clean one is a cut.
    private(set) var hadChannel = false
    /// Bytes read from the client that the channel has not taken yet.
    var toServer = PendingBytes()
    /// Bytes read from the channel that the client has not taken yet.
    var toClient = PendingBytes()
    /// The client sent FIN.
    var clientEOF = false
    /// We sent channel EOF.
    var channelEOFSent = false
    /// The server sent channel EOF.
    var serverEOF = false
    /// We shut down the client's write side.
    var clientShutDown = false

    var bytesUp = 0
    var bytesDown = 0

    /// The client's descriptors while the connection is open; `nil` once finished.
    private var client: ClientEnd?

    init(ticket: ClientTicket, client: ClientEnd) {
        self.ticket = ticket
        self.client = client
        isSocksReplyOwed = ticket.isSocksClient
        // Bytes that came with a SOCKS request go up like any others, and count as such.
        ticket.early.withUnsafeBytes { toServer.store($0) }
        bytesUp = ticket.early.count
    }

    /// A client of `service`, bound for its target (the listener's, tests').
    convenience init(client: ClientEnd, peer: Endpoint, service: Service, stats: ServiceStats, acceptedAt: ContinuousClock.Instant = .now) {
        self.init(ticket: ClientTicket(peer: peer, service: service, stats: stats, acceptedAt: acceptedAt), client: client)
    }

    /// Hands the client on whole, with a new ticket (a SOCKS client that named its target):
    /// the new connection owns the descriptors; this one is done, with no log line.
    func handOver(to ticket: ClientTicket) -> Connection {
        let next = Connection(ticket: ticket, client: client!)
        client = nil
        return next
    }

    /// Queues the SOCKS success reply, now that the channel is open.
    func replySocksSuccess() {
        guard isSocksReplyOwed else { return }
        isSocksReplyOwed = false
        SocksHandshake.reply(.succeeded).withUnsafeBytes { toClient.store($0) }
        _ = flushToClient()
    }

    /// The descriptor to read the client from; -1 once finished.
    var input: Int32 { client?.input ?? -1 }
    /// The descriptor to write to the client; -1 once finished.
    var output: Int32 { client?.output ?? -1 }
    /// Whether the client reads and writes one socket.
    var isOneSocket: Bool { input == output }

    /// Whether `finish` has run.
    var isClosed: Bool { client == nil }

    /// Both directions are finished and nothing is left to deliver.
    var isFinished: Bool {
        channelEOFSent && clientShutDown
    }

    /// Writes as much of `toClient` as the client takes. Returns `errno` on a hard error.
    func flushToClient() -> Int32? {
        let fd = output
        return toClient.drain { bytes in
            switch DescriptorIO.write(fd, bytes) {
            case .wrote(let count): return count
            case .wouldBlock: return 0
            case .failed(let code): return -Int(code)
            }
        }
    }

    /// Says "no more data" to the client (TCP half-close).
    func shutdownClientOutput() {
        client?.shutdownOutput()
        clientShutDown = true
    }

    /// Ends the connection: closes the client and writes its one log line. Returns `false`
    /// and does nothing if it had already ended, so no descriptor is ever closed twice.
    ///
    /// A stream cut before its end (the session died, tunneld stopped past its drain) is
    /// closed with a TCP reset, so the client cannot take the cut for the end of the stream:
    /// it reads what had already arrived, then ECONNRESET. A clean end, and a client that
    /// never had a channel (a refusal), get a plain close.
    @discardableResult
    func finish(_ outcome: ConnectionOutcome, logger: Logger) -> Bool {
        guard let end = client else { return false }
        client = nil
        if isSocksReplyOwed {
            // Best effort: the reply is 10 bytes into an empty socket buffer.
            isSocksReplyOwed = false
            let reply = SocksHandshake.reply(SocksHandshake.replyCode(for: outcome))
            _ = reply.withUnsafeBytes { DescriptorIO.write(end.output, $0) }
        }
        let isCut = hadChannel && outcome.isCut
        if hadChannel {
            end.close(reset: isCut)
        } else {
            // No tunnel was ever made: the client may be told why, in its own protocol.
            RefusalResponder.shared.close(end, after: outcome, service: service)
        }
        let seconds = (ContinuousClock.now - acceptedAt).seconds
        stats.connectionEnded(outcome, bytesUp: bytesUp, bytesDown: bytesDown)
        var metadata: Logger.Metadata = [
            "service": "\(service.name)",
            "peer": "\(peer)",
            "target": "\(target)",
            "via": "\(service.route.chain)",
            "duration": "\(seconds.threeDecimals)",
            "bytes.up": "\(bytesUp)",
            "bytes.down": "\(bytesDown)",
            "result": "\(outcome)",
        ]
        if isCut { metadata["client.close"] = "reset" }
        logger.log(level: outcome.isSuccess ? .info : .warning, "connection closed", metadata: metadata)
        ticket.onFinish?(outcome)
        return true
    }
}

/// The client's side of a connection: one socket, or two descriptors (`--stdio`).
/// Both are non-blocking; SIGPIPE is ignored, so writes to a closed peer fail with EPIPE.
struct ClientEnd {
    let input: Int32
    let output: Int32

    /// A connected socket used both ways.
    init(socket: Int32) {
        input = socket
        output = socket
    }

    /// Separate descriptors for reading and writing, e.g. standard input and output.
    init(input: Int32, output: Int32) {
        self.input = input
        self.output = output
    }

    /// Says "no more data" to the client: a TCP half-close, or closing the output pipe.
    func shutdownOutput() {
        if input == output {
            shutdown(output, Int32(SHUT_WR))
        } else if shutdown(output, Int32(SHUT_WR)) != 0 {
            // A pipe cannot be half-closed; an empty write end reads as EOF once closed.
            _ = dup2(Self.nullDescriptor, output)
        }
    }

    /// Closes the descriptors; with `reset`, a socket with a TCP reset (SO_LINGER 0) rather
    /// than a FIN (a pipe has no such thing and is closed).
    func close(reset: Bool = false) {
        if reset && input == output {
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(input, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
        Glibc.close(input)
        if output != input { Glibc.close(output) }
    }

    /// /dev/null opened for writing, to stand in for an output that is done.
    private static let nullDescriptor: Int32 = open("/dev/null", O_WRONLY | O_CLOEXEC)
}

/// Bytes one side refused, kept until it takes them. Empty costs no memory.
struct PendingBytes {
    private var storage: [UInt8] = []
    private var head = 0

    var isEmpty: Bool { head == storage.count }
    var count: Int { storage.count - head }

    mutating func store(_ bytes: UnsafeRawBufferPointer) {
        storage.append(contentsOf: bytes)
    }

    /// Offers the bytes to `write` (which returns how many it took, 0 for "later", or
    /// `-errno`) until it takes all or no more. Returns `errno` on a hard error.
    mutating func drain(_ write: (UnsafeRawBufferPointer) -> Int) -> Int32? {
        while head < storage.count {
            let taken = storage.withUnsafeBytes { write(UnsafeRawBufferPointer(rebasing: $0[head...])) }
            if taken < 0 { return Int32(-taken) }
            if taken == 0 { return nil }
            head += taken
        }
        storage = []
        head = 0
        return nil
    }

    /// Like `drain`, for a writer that throws and says "later" with `nil`.
    mutating func drainIntoChannel(_ write: (UnsafeRawBufferPointer) throws -> Int?) throws {
        while head < storage.count {
            guard let taken = try storage.withUnsafeBytes({ try write(UnsafeRawBufferPointer(rebasing: $0[head...])) }) else { return }
            head += taken
        }
        storage = []
        head = 0
    }
}
