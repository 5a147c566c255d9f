import FoundationEssentials
import Glibc
import TunnelConfig

/// Listening sockets passed by systemd (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), matched
/// to services by `FileDescriptorName=` or by address.
final class SocketActivation {
    struct Passed {
        let fd: Int32
        let name: String?
        let address: Endpoint?
    }

    private(set) var unclaimed: [Passed]

    /// Takes the sockets passed to this process, if any, and unsets the variables so that
    /// children do not see them.
    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        unclaimed = []
        guard let pidText = environment["LISTEN_PID"], Int32(pidText) == getpid(),
              let countText = environment["LISTEN_FDS"], let count = Int32(countText), count > 0 else { return }
        let names = environment["LISTEN_FDNAMES"]?.split(separator: ":", omittingEmptySubsequences: false).map(String.init) ?? []
        for index in 0..<Int(count) {
            let fd = Int32(3 + index)
            Socket.setNonBlocking(fd)
            let name = index < names.count && !names[index].isEmpty && names[index] != "unknown" ? names[index] : nil
            unclaimed.append(Passed(fd: fd, name: name, address: Socket.localEndpoint(of: fd)))
        }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
    }

    /// The passed sockets for `service`: those named after it, else those on its addresses.
    func claim(for service: Service) -> [Int32] {
        var named = unclaimed.indices.filter { unclaimed[$0].name == service.name }
        if named.isEmpty {
            named = unclaimed.indices.filter { index in unclaimed[index].address.map(service.listenAddresses.contains) ?? false }
        }
        let fds = named.map { unclaimed[$0].fd }
        for index in named.reversed() { unclaimed.remove(at: index) }
        return fds
    }

    /// Closes every descriptor this process inherited beyond standard input, output and error
    /// and the sockets systemd passed: a parent's stray descriptors must neither stay open in
    /// the daemon nor count against its descriptor limit. A descriptor with close-on-exec set
    /// cannot have come through exec, so it is this process's own (a log file, the journal's
    /// socket, opened before the daemon started) and stays open.
    func closeInheritedDescriptors() {
        let passed = Set(unclaimed.map(\.fd))
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        let open = entries.compactMap { Int32($0) }
        for fd in open where fd > 2 && !passed.contains(fd) && fcntl(fd, F_GETFD) & FD_CLOEXEC == 0 {
            // The directory listing's own descriptor is gone by now; closing a number that
            // is not open is harmless.
            close(fd)
        }
    }

    /// Closes the sockets no service claimed; returns their descriptions for a warning.
    func closeUnclaimed() -> [String] {
        defer {
            for passed in unclaimed { close(passed.fd) }
            unclaimed.removeAll()
        }
        return unclaimed.map { passed in
            [passed.name.map { "name \($0)" }, passed.address.map { "address \($0)" }].compactMap { $0 }.joined(separator: ", ")
        }
    }
}
