import Glibc
import Logging
import TunnelConfig

/// One accepted client and, once opened, its channel: the state of both copy directions.
///
/// A connection has one owner at a time: the listener that accepted it, then the session
/// event loop it was handed to (through a locked inbox). Its client descriptors are closed
/// exactly once, by `finish`; after that the connection holds no descriptor at all, so no
/// later call can touch a number the kernel may have given to another client.
///
/// Bytes move through the loop's scratch buffer; only what the receiving side refused stays
/// here (`toServer`, `toClient`), and while it does, that direction reads nothing more. So a
/// connection holds at most one read's worth of bytes per direction.
final class Connection: @unchecked Sendable {
    let peer: Endpoint
    let service: Service
    let stats: ServiceStats
    let acceptedAt: ContinuousClock.Instant
    /// Whether this client was already moved once from a session that died under it.
    var isRetry = false
    /// Whether this client was already moved once off a session whose channel open is stuck.
    var hasMoved = false
    /// When the client's channel open must have been answered.
    var openDeadline: ContinuousClock.Instant?
    /// Where its channel goes: the service's target, or the one a SOCKS client named.
    var target: Endpoint
    /// A SOCKS client waits for the reply to its CONNECT: success when the channel opens,
    /// else a failure code, written by `finish`.
    var isSocksReplyOwed = false

    var channel: (any TunnelChannel)?
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

    /// Called once when the connection has ended, after its log line (e.g. to free a limit slot).
    var onFinish: (@Sendable (ConnectionOutcome) -> Void)?

    /// The client's descriptors while the connection is open; `nil` once finished.
    private var client: ClientEnd?

    init(client: ClientEnd, peer: Endpoint, service: Service, stats: ServiceStats, acceptedAt: ContinuousClock.Instant = .now) {
        self.client = client
        self.peer = peer
        self.service = service
        self.stats = stats
        self.acceptedAt = acceptedAt
        target = service.target
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
        RefusalResponder.shared.close(end, after: outcome, service: service)
        let seconds = (ContinuousClock.now - acceptedAt).seconds
        stats.connectionEnded(outcome, bytesUp: bytesUp, bytesDown: bytesDown)
        logger.log(level: outcome.isSuccess ? .info : .warning, "connection closed", metadata: [
            "service": "\(service.name)",
            "peer": "\(peer)",
            "target": "\(target)",
            "via": "\(service.route.chain)",
            "duration": "\(seconds.threeDecimals)",
            "bytes.up": "\(bytesUp)",
            "bytes.down": "\(bytesDown)",
            "result": "\(outcome)",
        ])
        onFinish?(outcome)
        onFinish = nil
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

    /// Closes the descriptors.
    func close() {
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
