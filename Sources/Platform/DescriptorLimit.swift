import Glibc

/// The process's limit on open descriptors (`RLIMIT_NOFILE`), and raising its soft limit to
/// the hard one at start.
///
/// systemd starts services with a soft limit of 1024 (kept low for programs that still use
/// `select`, which cannot watch a descriptor above 1023) and a high hard limit (524288), and
/// its documentation (systemd.exec(5), `LimitNOFILE=`) asks programs that need more to raise
/// the soft limit themselves. tunneld needs two descriptors per tunnelled connection and
/// waits with `poll`/epoll only (libssh2 1.10 too), so a burst of thousands of connections
/// needs the soft limit raised, and nothing it runs breaks above 1023.
public enum DescriptorLimit {
    /// The soft and hard limits now.
    public static func current() -> (soft: Int, hard: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (0, 0) }
        return (count(limit.rlim_cur), count(limit.rlim_max))
    }

    /// Raises the soft limit to the hard limit. Returns the limits before and after; `after`
    /// equals `before` when the soft limit already was the hard one, or when the kernel
    /// refused (errno is left set then).
    @discardableResult
    public static func raiseSoftToHard() -> (before: Int, after: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (0, 0) }
        let before = count(limit.rlim_cur)
        guard limit.rlim_cur < limit.rlim_max else { return (before, before) }
        limit.rlim_cur = limit.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (before, before) }
        return (before, current().soft)
    }

    private static func count(_ value: rlim_t) -> Int {
        value == rlim_t.max ? Int.max : Int(clamping: value)
    }
}
