/// A value shared between threads and reached only under its lock, in the shape of
/// `Synchronization.Mutex` (`withLock`), on a pthread mutex. ThreadSanitizer understands a
/// pthread mutex; it cannot see the futex under `Mutex` (the standard library is not built
/// for it), and reported every access under one as a race.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = Lock()
    private var value: Value

    public init(_ value: Value) {
        self.value = value
    }

    /// Runs `body` on the value while holding the lock.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
