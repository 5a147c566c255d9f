import Glibc

/// Standard output and standard error, written with write(2).
enum StandardStreams {
    /// Writes all of `text` to `fd` (1 or 2), retrying on EINTR; an error ends the write.
    static func write(_ text: String, to fd: Int32) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }
}
