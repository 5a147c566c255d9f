import Glibc

/// A pipe another thread writes to so that a thread sleeping in `poll` wakes up.
final class Wakeup: Sendable {
    /// The end to poll for `POLLIN`.
    let readEnd: Int32
    private let writeEnd: Int32

    /// Throws when the process is out of descriptors (a new session then cannot start, but
    /// nothing else is harmed).
    init() throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw SocketError("pipe") }
        readEnd = ends[0]
        writeEnd = ends[1]
        Socket.setNonBlocking(readEnd)
        Socket.setNonBlocking(writeEnd)
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Wakes the poller; never blocks (a full pipe already means "wake up").
    func signal() {
        var byte: UInt8 = 1
        _ = write(writeEnd, &byte, 1)
    }

    /// Empties the pipe after a wake-up.
    func drain() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while read(readEnd, &bytes, bytes.count) > 0 {}
    }
}
