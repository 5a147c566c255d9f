import FoundationEssentials
import Glibc
import Platform

/// A problem with a file tunneld reads or writes, as one sentence naming the file.
public struct FileProblem: Error, Equatable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

extension KnownHosts {
    /// One pin at a time in this process: two sessions pinning at once must not lose a line.
    private static let writeLock = Lock()

    /// Adds `line` to the known_hosts file at `path` as OpenSSH would: the directory must
    /// belong to this account (or root) and not be writable by group or others; a symbolic
    /// link is not followed; the old content and the new line go to a temporary file in the
    /// same directory, which then replaces the file in one `rename`, keeping its mode (0644
    /// for a new file). A missing final newline in the old content is supplied.
    /// Throws `FileProblem` naming the file and saying what to do.
    public static func append(line: String, to path: String) throws {
        writeLock.lock()
        defer { writeLock.unlock() }
        let directory = PathText.parent(of: path).isEmpty ? "." : PathText.parent(of: path)
        try checkDirectory(directory, creating: true)

        var content: [UInt8] = []
        var mode: mode_t = 0o644
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        if fd >= 0 {
            defer { close(fd) }
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw FileProblem("cannot read \(path): \(errorText())") }
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw FileProblem("\(path) is not a regular file; point known_hosts at a regular file")
            }
            guard info.st_size <= 64 << 20 else {
                throw FileProblem("\(path) is larger than 64 MiB; is it a known_hosts file?")
            }
            mode = info.st_mode & 0o777
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let count = read(fd, &buffer, buffer.count)
                if count < 0 {
                    if errno == EINTR { continue }
                    throw FileProblem("cannot read \(path): \(errorText())")
                }
                if count == 0 { break }
                content += buffer[0..<count]
            }
        } else if errno == ELOOP {
            throw FileProblem("\(path) is a symbolic link, and tunneld does not follow links when writing known_hosts; point known_hosts at the file itself")
        } else if errno != ENOENT {
            throw FileProblem("cannot read \(path): \(errorText())")
        }
        if let last = content.last, last != UInt8(ascii: "\n") { content.append(UInt8(ascii: "\n")) }
        content += Array(line.utf8) + [UInt8(ascii: "\n")]

        var template = Array((directory + "/.known_hosts.tunneld-XXXXXX").utf8CString)
        let temporary = mkstemp(&template)
        guard temporary >= 0 else { throw FileProblem("cannot write a temporary file in \(directory): \(errorText())") }
        let temporaryPath = String(cString: template)
        var written = 0
        var failure: String?
        if fchmod(temporary, mode) != 0 { failure = errorText() }
        while failure == nil && written < content.count {
            let count = content.withUnsafeBytes { write(temporary, $0.baseAddress! + written, content.count - written) }
            if count < 0 {
                if errno == EINTR { continue }
                failure = errorText()
            } else {
                written += count
            }
        }
        if failure == nil && fsync(temporary) != 0 { failure = errorText() }
        if close(temporary) != 0 && failure == nil { failure = errorText() }
        if failure == nil && rename(temporaryPath, path) != 0 { failure = errorText() }
        if let failure {
            unlink(temporaryPath)
            throw FileProblem("cannot write \(path): \(failure)")
        }
    }

    /// Refuses a directory another account could change files in, as OpenSSH does before it
    /// trusts a file there. With `creating`, a missing directory is made, mode 0700.
    static func checkDirectory(_ directory: String, creating: Bool) throws {
        var problem = DirectoryTrust.problem(with: directory, forbiddenBits: 0o022, followingSymlinks: true)
        if problem == .unreadable(errno: ENOENT) && creating {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw FileProblem("cannot create the directory \(directory); create it, mode 0700")
            }
            problem = DirectoryTrust.problem(with: directory, forbiddenBits: 0o022, followingSymlinks: true)
        }
        switch problem {
        case nil:
            return
        case .unreadable(let code):
            throw FileProblem("cannot use the directory \(directory): \(errorText(code))")
        case .notADirectory:
            throw FileProblem("\(directory) is not a directory")
        case .foreignOwner(let uid):
            throw FileProblem("the directory \(directory) belongs to another account (uid \(uid)); keep known_hosts in a directory of this account or root")
        case .writableByOthers:
            throw FileProblem("the directory \(directory) is writable by group or others, so anyone could replace known_hosts there; chmod go-w \(directory)")
        }
    }
}

/// `strerror` for the current `errno`.
func errorText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
