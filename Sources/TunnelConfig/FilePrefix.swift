import Glibc

/// The first bytes of a file, read with open(2) and read(2).
public enum FilePrefix {
    /// Up to `limit` bytes from the start of the file at `path` (fewer at its end), or nil
    /// when it cannot be opened for reading. A read error ends the bytes where it happened.
    public static func read(_ path: String, atMost limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: min(limit, 64 * 1024))
        while bytes.count < limit {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, limit - bytes.count)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += buffer[0..<count]
        }
        return bytes
    }
}
