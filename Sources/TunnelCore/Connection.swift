import Glibc
import SSHTransport
import TunnelConfig

/// One accepted client and, once opened, its channel: the state of both copy directions.
///
/// Bytes move through the loop's scratch buffer; only what the receiving side refused stays
/// here (`toServer`, `toClient`), and while it does, that direction reads nothing more. So a
/// connection holds at most one read's worth of bytes per direction.
final class Connection {
    let client: ClientEnd
    let peer: Endpoint
    let service: Service
    let stats: ServiceStats
    let acceptedAt = ContinuousClock.now
    /// Whether this client was already moved once from a session that died under it.
    var isRetry = false

    var channel: SSHChannel?
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
    var onFinish: ((ConnectionOutcome) -> Void)?

    init(client: ClientEnd, peer: Endpoint, service: Service, stats: ServiceStats) {
        self.client = client
        self.peer = peer
        self.service = service
        self.stats = stats
    }

    /// Both directions are finished and nothing is left to deliver.
    var isFinished: Bool {
        channelEOFSent && clientShutDown
    }

    /// Writes as much of `toClient` as the client takes. Returns `errno` on a hard error.
    func flushToClient() -> Int32? {
        toClient.drain { bytes in
            let written = write(client.output, bytes.baseAddress, bytes.count)
            return written >= 0 ? written : (errno == EAGAIN || errno == EINTR ? 0 : -Int(errno))
        }
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
            Glibc.close(output)
        }
    }

    /// Closes the descriptors.
    func close() {
        Glibc.close(input)
        if output != input { Glibc.close(output) }
    }
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

    /// Like `drain`, for a writer that throws.
    mutating func drainIntoChannel(_ write: (UnsafeRawBufferPointer) throws -> Int?) throws {
        while head < storage.count {
            guard let taken = try storage.withUnsafeBytes({ try write(UnsafeRawBufferPointer(rebasing: $0[head...])) }) else { return }
            head += taken
        }
        storage = []
        head = 0
    }
}
