import Platform

/// Standard output and standard error, written with write(2).
enum StandardStreams {
    /// Writes all of `text` to `fd` (1 or 2), retrying on EINTR; an error ends the write.
    static func write(_ text: String, to fd: Int32) {
        DescriptorIO.writeAll(fd, text)
    }
}
