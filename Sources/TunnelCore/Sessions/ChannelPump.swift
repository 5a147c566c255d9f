import Glibc
import Platform
import SSHTransport

/// Copies bytes both ways between one client and its channel, through the loop's scratch
/// buffer, and turns each side's EOF into the other side's half-close.
///
/// Flow control: the channel is read only while the client has taken everything before, so
/// the server's window (not our memory) holds what a slow client has not read; the client is
/// read only while the channel took everything before and the session's output is below its
/// high-water mark.
struct ChannelPump {
    /// How a pass over one connection ended.
    enum Result: Equatable {
        /// Still going.
        case open
        /// Both directions finished cleanly.
        case finished
        /// The client's socket failed with this errno.
        case clientFailed(Int32)
    }

    private let scratch: UnsafeMutableRawBufferPointer

    /// - `scratch`: the loop's buffer, reused by every connection.
    init(scratch: UnsafeMutableRawBufferPointer) {
        self.scratch = scratch
    }

    /// Moves what can move now for `connection`. `revents` are the client's poll events;
    /// `mayReadClient` is false while the session's output is above its high-water mark.
    /// Throws only when the session failed.
    func pump(_ connection: Connection, revents: Int16, mayReadClient: Bool) throws -> Result {
        guard let channel = connection.channel else { return .open }

        // Server to client.
        if !connection.toClient.isEmpty, revents & Int16(POLLOUT | POLLERR | POLLHUP) != 0 {
            if let error = connection.flushToClient() { return .clientFailed(error) }
        }
        reading: while connection.toClient.isEmpty && !connection.serverEOF {
            switch try channel.read(into: scratch) {
            case .wouldBlock:
                break reading
            case .endOfFile:
                connection.serverEOF = true
            case .bytes(let count):
                connection.bytesDown += count
                if let error = deliver(UnsafeRawBufferPointer(rebasing: scratch[0..<count]), to: connection) {
                    return .clientFailed(error)
                }
            }
        }
        if connection.serverEOF && connection.toClient.isEmpty && !connection.clientShutDown {
            connection.shutdownClientOutput()
        }

        // Client to server.
        try connection.toServer.drainIntoChannel(channel.write)
        if connection.toServer.isEmpty && !connection.clientEOF && mayReadClient
            && revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            if let error = try readClient(connection, into: channel) { return .clientFailed(error) }
        }
        if connection.clientEOF && connection.toServer.isEmpty && !connection.channelEOFSent {
            if try channel.sendEOF() != nil { connection.channelEOFSent = true }
        }
        return connection.isFinished ? .finished : .open
    }

    /// Reads what the client sent (one scratch buffer's worth) and offers it to the channel;
    /// what the channel refuses waits in `toServer`. Returns errno on a client failure.
    private func readClient(_ connection: Connection, into channel: any TunnelChannel) throws -> Int32? {
        switch DescriptorIO.read(connection.input, into: scratch) {
        case .wouldBlock:
            return nil
        case .endOfFile:
            connection.clientEOF = true
            return nil
        case .failed(let code):
            return code
        case .bytes(let count):
            connection.bytesUp += count
            var offset = 0
            while offset < count {
                guard let taken = try channel.write(UnsafeRawBufferPointer(rebasing: scratch[offset..<count])) else { break }
                offset += taken
            }
            if offset < count {
                connection.toServer.store(UnsafeRawBufferPointer(rebasing: scratch[offset..<count]))
            }
            return nil
        }
    }

    /// Writes `bytes` to the client; what it refuses waits in `toClient`. Returns errno on failure.
    private func deliver(_ bytes: UnsafeRawBufferPointer, to connection: Connection) -> Int32? {
        var written = 0
        switch DescriptorIO.write(connection.output, bytes) {
        case .wrote(let count): written = count
        case .wouldBlock: written = 0
        case .failed(let code): return code
        }
        if written < bytes.count {
            connection.toClient.store(UnsafeRawBufferPointer(rebasing: bytes[written...]))
        }
        return nil
    }
}
