import Glibc

/// A pipe another thread writes to so that a thread sleeping in `poll` wakes up.
final class Wakeup {
    /// The end to poll for `POLLIN`.
    let readEnd: Int32
    private let writeEnd: Int32

    init() {
        var ends: [Int32] = [0, 0]
        precondition(pipe(&ends) == 0, "pipe: \(String(cString: strerror(errno)))")
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
