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
        let directory = PathText.parent(of: path)
        let parent = PathText.parent(of: directory)
        try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try Self.checkDirectory(directory, alsoTrusted: owner)
        if FileManager.default.fileExists(atPath: path) {
            if (try? ControlSocket.request("status", path: path, timeout: 1)) != nil {
                throw ControlError(description: "another tunneld answers on \(path); stop it or set control_socket to another path")
            }
            unlink(path)
        }
        var address = try Self.address(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let oldMask = umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard bound == 0, listen(fd, 16) == 0 else {
            let error = ControlError(description: "cannot create the control socket \(path): \(String(cString: strerror(errno)))")
            Glibc.close(fd)
            throw error
        }
        if let group {
            guard chown(path, uid_t.max, group) == 0 else {
                let error = ControlError(description: "cannot give the control socket \(path) to group \(group): \(String(cString: strerror(errno)))")
                unlink(path)
                Glibc.close(fd)
                throw error
            }
            chmod(path, 0o660)
        } else {
            chmod(path, 0o600)
        }
    }

    /// Starts answering requests, each with what `respond` returns for its line.
    func start(respond: @escaping @Sendable (String) -> String) {
        DetachedThread.start(name: "control") { [self] in serve(respond) }
    }

    /// Stops answering and removes the socket file.
    func close() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    private func serve(_ respond: @Sendable (String) -> String) {
        while true {
            let client = accept(fd, nil, nil)
            // Not inherited by `ssh -G`, which a reload may start meanwhile.
            if client >= 0 { _ = fcntl(client, F_SETFD, FD_CLOEXEC) }
            if client < 0 {
                switch errno {
                case EINTR, ECONNABORTED:
                    continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of descriptors: answer again once some are free; never stop answering.
                    usleep(100_000)
                    continue
                default:
                    return
                }
            }
            // A peer that says nothing holds the socket for a second at most.
            var timeout = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var request: [UInt8] = []
            var byte: UInt8 = 0
            while request.count < 256, recv(client, &byte, 1, 0) == 1, byte != UInt8(ascii: "\n") {
                request.append(byte)
            }
            let answer = respond(String(decoding: request, as: UTF8.self).trimmingWhitespace)
            _ = answer.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            Glibc.close(client)
        }
    }

    /// Sends `line` to the daemon at `path` and returns its whole answer.
    public static func request(_ line: String, path: String, timeout: Double = 5) throws -> String {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var value = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            throw ControlError(description: "cannot reach tunneld at \(path): \(String(cString: strerror(errno))); is it running? (see control_socket in defaults)")
        }
        _ = (line + "\n").withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            answer.append(contentsOf: buffer[0..<count])
        }
        return String(decoding: answer, as: UTF8.self)
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
