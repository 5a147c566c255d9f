import Glibc

/// The bytes a session has produced but the socket has not yet taken.
///
/// libssh2 keeps one slot for a partly sent packet; interleaving channels under load then
/// fails with `LIBSSH2_ERROR_BAD_USE`. So the session's send callback always accepts the whole
/// packet: what the socket refuses waits here, and the event loop flushes it on `POLLOUT`.
struct OutgoingBuffer {
    private var storage: [UInt8] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if head > 0 && head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        }
        storage.append(contentsOf: bytes)
    }

    /// Writes as much as the non-blocking socket takes. Returns `errno` on a hard error.
    mutating func flush(to socket: Int32) -> Int32? {
        if head < storage.count {
            let (sent, error) = storage.withUnsafeBytes { bytes in
                Self.send(socket, bytes.baseAddress! + head, storage.count - head)
            }
            head += sent
            if let error { return error }
            if head < storage.count { return nil }
        }
        if storage.capacity > 1 << 20 {
            storage = []
        } else {
            storage.removeAll(keepingCapacity: true)
        }
        head = 0
        return nil
    }

    /// Sends as much of `length` bytes as the non-blocking socket takes now: the one place
    /// where the session's socket writes retry EINTR and stop at EAGAIN. Returns how many
    /// were sent, and `errno` on a hard error.
    static func send(_ socket: Int32, _ bytes: UnsafeRawPointer, _ length: Int) -> (sent: Int, error: Int32?) {
        var offset = 0
        while offset < length {
            let sent = Glibc.send(socket, bytes + offset, length - offset, Int32(MSG_NOSIGNAL))
            if sent >= 0 {
                offset += sent
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return (offset, nil)
            default: return (offset, errno)
            }
        }
        return (offset, nil)
    }
}
