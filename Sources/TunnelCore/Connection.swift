import Glibc
import SSHTransport
import TunnelConfig

/// One accepted client and, once opened, its channel: the state of both copy directions.
///
/// Bytes move through the loop's scratch buffer; only what the receiving side refused stays
/// here (`toServer`, `toClient`), and while it does, that direction reads nothing more. So a
/// connection holds at most one read's worth of bytes per direction.
final class Connection {
    let client: Int32
    let peer: Endpoint
    let service: Service
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

    init(client: Int32, peer: Endpoint, service: Service) {
        self.client = client
        self.peer = peer
        self.service = service
    }

    /// Both directions are finished and nothing is left to deliver.
    var isFinished: Bool {
        channelEOFSent && clientShutDown
    }

    /// Writes as much of `toClient` as the client takes. Returns `errno` on a hard error.
    func flushToClient() -> Int32? {
        toClient.drain { bytes in
            let written = send(client, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            return written >= 0 ? written : (errno == EAGAIN || errno == EINTR ? 0 : -Int(errno))
        }
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
