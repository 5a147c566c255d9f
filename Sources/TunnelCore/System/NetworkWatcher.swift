import Glibc
import Platform

/// Watches the kernel's link, address and route changes (rtnetlink) on its own thread and
/// reports each burst of them once. It sleeps in `poll` until the kernel has news, so an idle
/// daemon does not wake up for it.
final class NetworkWatcher: @unchecked Sendable {
    /// Message groups: links, IPv4 and IPv6 addresses and routes.
    private static let groups: UInt32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400
    /// Changes closer together than this are one change (a link going down brings several).
    private static let settle: Int32 = 30

    private let onChange: @Sendable () -> Void

    init(onChange: @escaping @Sendable () -> Void) {
        self.onChange = onChange
    }

    /// Starts watching. Returns a sentence saying why not, if the kernel refused.
    func start() -> String? {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return "netlink socket: \(String(cString: strerror(errno)))" }
        // struct sockaddr_nl { sa_family_t nl_family; unsigned short nl_pad; u32 nl_pid; u32 nl_groups; }
        var address = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: UInt16(AF_NETLINK)) { address.replaceSubrange(0..<2, with: $0) }
        withUnsafeBytes(of: Self.groups) { address.replaceSubrange(8..<12, with: $0) }
        let bound = address.withUnsafeBytes { bytes in
            bind(fd, bytes.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(bytes.count))
        }
        guard bound == 0 else {
            let reason = "netlink bind: \(String(cString: strerror(errno)))"
            close(fd)
            return reason
        }
        DetachedThread.start(name: "network") { [self] in watch(fd) }
        return nil
    }

    private func watch(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            descriptor.revents = 0
            guard poll(&descriptor, 1, -1) >= 0 || errno == EINTR else { return }
            guard drain(fd, &buffer) else { return }
            // Let the rest of the burst arrive, then report it once.
            repeat {
                descriptor.revents = 0
            } while poll(&descriptor, 1, Self.settle) > 0 && drain(fd, &buffer)
            onChange()
        }
    }

    /// Reads every queued message. Returns false if the socket failed for good.
    private func drain(_ fd: Int32, _ buffer: inout [UInt8]) -> Bool {
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count > 0 { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            // ENOBUFS: the kernel dropped messages; still a change, still watching.
            if count < 0 && (errno == EINTR || errno == ENOBUFS) { continue }
            return false
        }
    }
}
