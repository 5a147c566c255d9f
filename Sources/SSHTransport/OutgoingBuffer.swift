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
        while head < storage.count {
            let sent = storage.withUnsafeBytes { bytes in
                send(socket, bytes.baseAddress! + head, storage.count - head, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: return nil
                default: return errno
                }
            }
            head += sent
        }
        if storage.capacity > 1 << 20 {
            storage = []
        } else {
            storage.removeAll(keepingCapacity: true)
        }
        head = 0
        return nil
    }
}
