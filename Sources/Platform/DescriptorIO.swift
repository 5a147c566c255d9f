import Glibc

/// Reads and writes on non-blocking descriptors: the one place where EINTR is retried and
/// EAGAIN becomes "would block".
public enum DescriptorIO {
    public enum ReadResult: Equatable {
        case bytes(Int)
        case endOfFile
        case wouldBlock
        case failed(Int32)
    }

    public enum WriteResult: Equatable {
        case wrote(Int)
        case wouldBlock
        case failed(Int32)
    }

    /// Reads once into `buffer`.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count > 0 { return .bytes(count) }
            if count == 0 { return .endOfFile }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(errno)
            }
        }
    }

    /// Writes all of `text` to a blocking descriptor (a terminal, a log file), retrying on
    /// EINTR; an error ends the write. Returns how many bytes were written.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ text: String) -> Int {
        var text = text
        return text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    break
                }
                offset += written
            }
            return offset
        }
    }

    /// Writes as much of `bytes` as the descriptor takes now.
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> WriteResult {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written >= 0 {
                offset += written
                continue
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return offset > 0 ? .wrote(offset) : .wouldBlock
            default: return offset > 0 ? .wrote(offset) : .failed(errno)
            }
        }
        return .wrote(offset)
    }
}
