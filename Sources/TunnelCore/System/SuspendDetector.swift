import Glibc

/// Notices that the machine was suspended: CLOCK_BOOTTIME counts the time asleep and
/// CLOCK_MONOTONIC does not, so their difference grows by the length of each suspend.
struct SuspendDetector: Sendable {
    /// A suspend shorter than this is not worth treating sessions as suspect.
    static let threshold: Int64 = 1_000_000_000

    private var lastOffset: Int64
    private let readOffset: @Sendable () -> Int64

    /// - `readOffset`: nanoseconds spent suspended since boot (tests pass their own).
    init(readOffset: @escaping @Sendable () -> Int64 = SuspendDetector.offset) {
        self.readOffset = readOffset
        lastOffset = readOffset()
    }

    /// Whether a suspend happened since the last call.
    mutating func resumedFromSuspend() -> Bool {
        let offset = readOffset()
        defer { lastOffset = offset }
        return offset - lastOffset >= Self.threshold
    }

    /// Nanoseconds spent suspended since boot.
    @Sendable static func offset() -> Int64 {
        nanoseconds(CLOCK_BOOTTIME) - nanoseconds(CLOCK_MONOTONIC)
    }

    private static func nanoseconds(_ clock: clockid_t) -> Int64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}
