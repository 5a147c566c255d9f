import CLinux
import Glibc

/// Readiness of many descriptors at a cost proportional to the ready ones: Linux epoll,
/// level-triggered, with each descriptor's interest changed only when it changes.
///
/// Level-triggered, not edge-triggered, because tunneld's loops leave bytes unread on
/// purpose (flow control: a client is not read while its channel cannot take more). With
/// levels, "not now" is saying so once (dropping the interest), and a descriptor read only
/// partly in one pass is reported again in the next, so no loop must drain a descriptor to
/// EAGAIN or remember by itself which ones were left ready.
///
/// A descriptor with no interest is removed, not kept with an empty mask: epoll reports
/// hang-ups and errors regardless of the mask, and a hang-up nobody waits for would wake the
/// loop again and again. `Registration` keeps what is registered, so that `update` costs one
/// system call only on a change, and none at all otherwise.
///
/// An instance is itself a descriptor that polls readable while any of its own descriptors is
/// ready, so one `EventPoll` can be nested in another (a set of clients paused as a whole
/// with one call).
public final class EventPoll {
    /// What to wait for on one descriptor.
    public struct Interest: OptionSet, Sendable, Equatable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Interest(rawValue: EPOLLIN.rawValue)
        public static let writable = Interest(rawValue: EPOLLOUT.rawValue)
    }

    /// One ready descriptor, as `wait` reports it.
    public struct Ready: Sendable {
        /// The token the descriptor was registered with.
        public var token: UInt64
        /// The raw epoll events (`EPOLLIN`, `EPOLLOUT`, `EPOLLHUP`, `EPOLLERR`, ...).
        public var events: UInt32

        public var isReadable: Bool { events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 }
        public var isWritable: Bool { events & (EPOLLOUT.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 }
        public var hasFailed: Bool { events & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 }
    }

    /// What one descriptor is registered for, kept by its owner next to the descriptor.
    public struct Registration: Sendable, Equatable {
        public private(set) var interest: Interest = []
        /// Whether the descriptor cannot be waited on (a regular file): it is always ready.
        public private(set) var isAlwaysReady = false
        public init() {}

        mutating func record(_ interest: Interest) { self.interest = interest }
        mutating func markAlwaysReady() { isAlwaysReady = true }
    }

    /// The epoll descriptor, to nest this set in another or to wait on it with `poll`.
    public let descriptor: Int32
    private var buffer: UnsafeMutableBufferPointer<epoll_event>

    /// - `capacity`: at most this many ready descriptors are reported per `wait`; the rest
    ///   stay ready (level-triggered) for the next one.
    /// Throws the errno when the process is out of descriptors.
    public init(capacity: Int = 256) throws(Errno) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw Errno(errno) }
        descriptor = fd
        buffer = .allocate(capacity: max(1, capacity))
    }

    deinit {
        close(descriptor)
        buffer.deallocate()
    }

    /// Makes `fd`'s interest `interest`: adds, changes or removes its registration as
    /// needed, and does nothing if it is already so. A descriptor epoll cannot wait on (a
    /// regular file, /dev/null) is marked always ready instead; the caller treats it as ready
    /// in every pass, as `poll` would report it.
    public func update(_ fd: Int32, token: UInt64, to interest: Interest, registration: inout Registration) {
        guard fd >= 0, !registration.isAlwaysReady, interest != registration.interest else { return }
        var event = epoll_event()
        event.events = interest.rawValue
        event.data.u64 = token
        let operation: Int32
        if registration.interest.isEmpty {
            operation = EPOLL_CTL_ADD
        } else if interest.isEmpty {
            operation = EPOLL_CTL_DEL
        } else {
            operation = EPOLL_CTL_MOD
        }
        if epoll_ctl(descriptor, operation, fd, &event) == 0 {
            registration.record(interest)
        } else if errno == EPERM {
            registration.markAlwaysReady()
        } else if operation == EPOLL_CTL_DEL || errno == EBADF {
            // The descriptor is already closed (a close removes it from every epoll set).
            registration.record([])
        } else if operation == EPOLL_CTL_ADD && errno == EEXIST {
            // Registered behind our back (a descriptor number reused): take it over.
            if epoll_ctl(descriptor, EPOLL_CTL_MOD, fd, &event) == 0 { registration.record(interest) }
        } else if operation == EPOLL_CTL_MOD && errno == ENOENT {
            if epoll_ctl(descriptor, EPOLL_CTL_ADD, fd, &event) == 0 { registration.record(interest) }
        }
        // ENOMEM/ENOSPC: the registration stays as it was; the caller's next update tries again.
    }

    /// Removes `fd` before it is closed (closing would remove it too, unless the descriptor
    /// was duplicated).
    public func remove(_ fd: Int32, registration: inout Registration) {
        update(fd, token: 0, to: [], registration: &registration)
    }

    /// Waits up to `timeout` milliseconds (-1: without a bound) and calls `body` for each
    /// ready descriptor. Returns how many were ready (0 on a timeout or a signal).
    @discardableResult
    public func wait(timeout: Int32, _ body: (Ready) -> Void) -> Int {
        let count = epoll_wait(descriptor, buffer.baseAddress, Int32(buffer.count), timeout)
        guard count > 0 else { return 0 }
        for index in 0..<Int(count) {
            body(Ready(token: buffer[index].data.u64, events: buffer[index].events))
        }
        return Int(count)
    }
}

/// An errno value, as a typed error.
public struct Errno: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }
}
