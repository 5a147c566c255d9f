import FoundationEssentials
import Glibc
import Platform
import TunnelConfig

/// The daemon's Unix control socket (mode 0600, or 0660 for a group): a client sends one
/// line (`status`, `status json`, `reconnect [SERVICE…]`) and reads the answer until the
/// daemon closes the connection.
final class ControlSocket: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let events: EventPoll

    /// Where the socket lives when the configuration does not say: /run/tunneld as root,
    /// else $XDG_RUNTIME_DIR, else a private directory of its own in /tmp.
    public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if geteuid() == 0 { return "/run/tunneld/control.sock" }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/tunneld.sock" }
        return "/tmp/tunneld-\(geteuid())/control.sock"
    }

    /// Makes sure nobody else can replace the socket: its directory is created (mode 0755) if
    /// missing, must be a real directory owned by this account, root or `alsoTrusted` (the
    /// run_as account), and must not be writable by others (a socket in /tmp itself could be
    /// squatted by another user).
    static func checkDirectory(_ directory: String, alsoTrusted: uid_t? = nil) throws {
        if mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw ControlError(description: "cannot create the control socket directory \(directory): \(String(cString: strerror(errno)))")
        }
        switch DirectoryTrust.problem(with: directory, alsoTrusted: alsoTrusted, forbiddenBits: 0o002, followingSymlinks: false) {
        case nil:
            return
        case .unreadable(let code):
            throw ControlError(description: "cannot read the control socket directory \(directory): \(String(cString: strerror(code)))")
        case .notADirectory:
            throw ControlError(description: "the control socket directory \(directory) is not a directory (a symlink?); remove it or set control_socket elsewhere")
        case .foreignOwner(let uid):
            throw ControlError(description: "the control socket directory \(directory) belongs to another account (uid \(uid)); remove it or set control_socket elsewhere")
        case .writableByOthers:
            throw ControlError(description: "the control socket directory \(directory) is writable by every account, so another could take the socket's place; set control_socket to a path in a private directory")
        }
    }

    /// Binds `path`, replacing a stale socket file but not a live daemon's. The socket is
    /// mode 0600; with `group`, it belongs to that group and is mode 0660 (changing the group
    /// needs root or CAP_CHOWN). Clients wait in the backlog until `start(respond:)`.
    /// - `owner`: the run_as account, whose directory is trusted too.
    init(path: String, group: gid_t? = nil, owner: uid_t? = nil) throws {
        self.path = path
        events = try EventPoll(capacity: 64)
        fd = try Self.bindSocketFile(path, group: group, owner: owner, what: "control socket")
    }

    /// A listening Unix socket at `path` (`what` names it in errors: "control socket"), in a
    /// directory `checkDirectory` accepts, replacing a stale socket file but not a live
    /// daemon's. The file is made with its final mode (0600; 0660 with `group`) by bind
    /// itself under a umask, and its group is set without following a link, so a link that
    /// another account swaps in for it never passes a mode or group to another file.
    static func bindSocketFile(_ path: String, group: gid_t?, owner: uid_t?, what: String) throws -> Int32 {
        let directory = PathText.parent(of: path)
        let parent = PathText.parent(of: directory)
        try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try checkDirectory(directory, alsoTrusted: owner)
        var existing = stat()
        if lstat(path, &existing) == 0 {
            if existing.st_mode & S_IFMT == S_IFSOCK, (try? ControlSocket.request("status", path: path, timeout: 1)) != nil {
                throw ControlError(description: "another tunneld answers on \(path); stop it or set control_socket to another path")
            }
            unlink(path)
        }
        var address = try Self.address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError(description: "cannot make the \(what) \(path): \(String(cString: strerror(errno)))") }
        let oldMask = umask(group == nil ? 0o177 : 0o117)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard bound == 0, listen(fd, 128) == 0 else {
            let error = ControlError(description: "cannot create the \(what) \(path): \(String(cString: strerror(errno)))")
            Glibc.close(fd)
            throw error
        }
        if let group, let code = giveGroup(path, to: group) {
            unlink(path)
            Glibc.close(fd)
            throw ControlError(description: "cannot give the \(what) \(path) to group \(group): \(String(cString: strerror(code)))")
        }
        return fd
    }

    /// Gives the socket file at `path` to `group`; nil when done, else the errno. A symbolic
    /// link found at `path` is changed itself, never the file it points to.
    static func giveGroup(_ path: String, to group: gid_t) -> Int32? {
        fchownat(AT_FDCWD, path, uid_t.max, group, AT_SYMLINK_NOFOLLOW) == 0 ? nil : errno
    }

    /// Starts answering requests, each with what `respond` returns for its line, from a loop
    /// of its own that serves clients at once, each with a second to send its line.
    func start(respond: @escaping @Sendable (String) -> String) {
        let limits = RequestServer.Limits(maximumRequest: Self.maximumRequest)
        let server = RequestServer(listening: fd, events: events, limits: limits, isWhole: { $0.contains(UInt8(ascii: "\n")) }) { request, _ in
            let line = request.prefix { $0 != UInt8(ascii: "\n") }
            return Array(respond(String(decoding: line, as: UTF8.self).trimmingWhitespace).utf8)
        }
        server.start(name: "control")
    }

    /// Stops answering and removes the socket file.
    func close() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    /// The longest request line; a request is a command and a few service names.
    static let maximumRequest = 256

    /// Sends `line` to the daemon at `path` and returns its whole answer (all it sends before
    /// it closes the connection). Throws `ControlError` when the daemon cannot be reached,
    /// does not take the connection or answer within `timeout` seconds in all, closes without
    /// an answer, or stops in the middle of one.
    public static func request(_ line: String, path: String, timeout: Double = 5) throws -> String {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError(description: "cannot make a socket: \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        let deadline = monotonicSeconds() + timeout
        let seconds = timeout.rounded(.down)
        // A Unix socket's connect waits while the daemon's backlog is full, at most SO_SNDTIMEO.
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((timeout - seconds) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            if errno == EAGAIN || errno == EINPROGRESS {
                throw ControlError(description: "tunneld at \(path) did not take the connection within \(timeout.formatted) s; it may be stalled")
            }
            throw ControlError(description: "cannot reach tunneld at \(path): \(String(cString: strerror(errno))); is it running? (see control_socket in defaults)")
        }
        Socket.setNonBlocking(fd)
        let request = Array((line + "\n").utf8)
        var sent = 0
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let left = deadline - monotonicSeconds()
            guard left > 0 else {
                if answer.isEmpty {
                    throw ControlError(description: "tunneld at \(path) did not answer within \(timeout.formatted) s; it may be stalled")
                }
                throw ControlError(description: "tunneld at \(path) sent part of an answer (\(answer.count) bytes), then nothing until the \(timeout.formatted) s timeout; the answer is incomplete")
            }
            var entry = pollfd(fd: fd, events: Int16(sent < request.count ? POLLOUT : POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32((left * 1000).rounded(.up)))
            if ready < 0 && errno != EINTR {
                throw ControlError(description: "cannot wait for tunneld at \(path): \(String(cString: strerror(errno)))")
            }
            guard ready > 0 else { continue }
            if sent < request.count {
                let count = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, request.count - sent, Int32(MSG_NOSIGNAL)) }
                if count > 0 { sent += count; continue }
                if count < 0 && (errno == EAGAIN || errno == EINTR) { continue }
                throw ControlError(description: "tunneld at \(path) closed the connection before taking the request; is it running?")
            }
            let count = recv(fd, &buffer, buffer.count, 0)
            if count > 0 {
                answer.append(contentsOf: buffer[0..<count])
            } else if count == 0 {
                guard !answer.isEmpty else {
                    throw ControlError(description: "tunneld at \(path) closed the connection without an answer")
                }
                return String(decoding: answer, as: UTF8.self)
            } else if errno != EAGAIN && errno != EINTR {
                throw ControlError(description: "tunneld at \(path) broke off its answer: \(String(cString: strerror(errno)))")
            }
        }
    }

    private static func monotonicSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    private static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ControlError(description: "control socket path \(path) is too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }
}

/// The control socket could not be made or reached.
public struct ControlError: Error, CustomStringConvertible {
    public var description: String
}

private extension Double {
    /// Seconds as a person writes them: `5`, `0.5`.
    var formatted: String { self == rounded() ? String(Int(self)) : String(self) }
}

/// `tunneld status`: asks the running daemon.
public enum StatusClient {
    /// The socket a client asks when none is named: its own default, else the system
    /// daemon's (so members of the run_as group need no --socket).
    static func defaultClientPath() -> String {
        let own = ControlSocket.defaultPath()
        let system = "/run/tunneld/control.sock"
        if access(own, F_OK) != 0 && access(system, F_OK) == 0 { return system }
        return own
    }

    /// How `tunneld status` prints.
    public enum Format: String, CaseIterable, Sendable {
        case table
        case json
        case prometheus
    }

    /// The daemon's answer to `status` in `format`.
    public static func fetch(format: Format, socketPath: String?) throws -> String {
        let request = format == .table ? "status" : "status \(format.rawValue)"
        return try ControlSocket.request(request, path: socketPath ?? defaultClientPath())
    }

    /// Asks the daemon to treat the sessions of `services` (all if empty) as suspect and to
    /// start their backoff over; returns its answer.
    public static func reconnect(services: [String], socketPath: String?) throws -> String {
        try ControlSocket.request((["reconnect"] + services).joined(separator: " "), path: socketPath ?? defaultClientPath())
    }
}
