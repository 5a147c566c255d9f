import Glibc

/// A mutual-exclusion lock for code that takes and releases it in separate statements
/// (`lock()`, `defer { unlock() }`); `Locked` fits state used in one closure.
public final class Lock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Waits until no other thread holds the lock, then holds it.
    public func lock() {
        pthread_mutex_lock(mutex)
    }

    /// Releases the lock that this thread holds.
    public func unlock() {
        pthread_mutex_unlock(mutex)
    }
}
