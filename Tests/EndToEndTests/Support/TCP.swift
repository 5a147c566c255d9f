import Foundation
import Glibc

/// Blocking TCP helpers for test clients and servers, all on 127.0.0.1, all with timeouts.
enum TCP {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// A port nobody listens on right now.
    static func freePort() -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = loopback(port: 0)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return UInt16(bigEndian: address.sin_port)
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return address
    }

    /// Connects to 127.0.0.1:`port`; the socket gets `timeout`-second send and receive timeouts.
    static func connect(port: UInt16, timeout: Double = 10) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: port)
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard status == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "connect to 127.0.0.1:\(port): \(message)")
        }
        setTimeout(fd, timeout)
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    static func setTimeout(_ fd: Int32, _ seconds: Double) {
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A listening socket on 127.0.0.1:`port` (0: any free port). Returns the socket and its port.
    static func listen(port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = loopback(port: port)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, Glibc.listen(fd, 1024) == 0 else {
            close(fd)
            throw Failure(description: "listen on \(port): \(String(cString: strerror(errno)))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// Writes all of `bytes`; throws on error or timeout.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, min(bytes.count - offset, 1 << 20), Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "send: \(String(cString: strerror(errno)))")
            }
            offset += sent
        }
    }

    /// Reads until EOF (or `limit` bytes); throws on error or timeout.
    static func readAll(_ fd: Int32, limit: Int = .max) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while result.count < limit {
            let count = recv(fd, &buffer, min(buffer.count, limit - result.count), 0)
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "recv after \(result.count) bytes: \(String(cString: strerror(errno)))")
            }
            result.append(contentsOf: buffer[0..<count])
        }
        return result
    }

    /// Reads one line, up to and with its `\n`, a byte at a time.
    static func readLine(_ fd: Int32) throws -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.last != UInt8(ascii: "\n") {
            let count = recv(fd, &byte, 1, 0)
            guard count == 1 else { throw Failure(description: "connection closed after \(line.count) bytes of a line") }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// Times `count` SMTP-shaped exchanges on 127.0.0.1:`port`, back to back after one
    /// untimed: connect, banner, EHLO, reply, QUIT, reply, close. Returns the seconds of each,
    /// sorted; throws naming the exchange that failed.
    static func serverFirstExchangeTimes(port: UInt16, count: Int) throws -> [Double] {
        func exchange() throws -> Double {
            let started = Date()
            let fd = try connect(port: port, timeout: 5)
            defer { close(fd) }
            _ = try readLine(fd)
            try sendAll(fd, Array("EHLO laptop\r\n".utf8))
            _ = try readLine(fd)
            try sendAll(fd, Array("QUIT\r\n".utf8))
            _ = try readLine(fd)
            return Date().timeIntervalSince(started)
        }
        _ = try exchange()
        var times: [Double] = []
        for round in 0..<count {
            do {
                times.append(try exchange())
            } catch {
                throw Failure(description: "exchange \(round): \(error)")
            }
        }
        return times.sorted()
    }

    /// Sends `bytes` (then half-closes) while reading everything back, as an echo client does.
    /// Returns what came back.
    static func exchange(port: UInt16, _ bytes: [UInt8], timeout: Double = 30) throws -> [UInt8] {
        let fd = try connect(port: port, timeout: timeout)
        defer { close(fd) }
        let sendResult = Outcome()
        let sender = Thread {
            do {
                try sendAll(fd, bytes)
                shutdown(fd, Int32(SHUT_WR))
                sendResult.finish(nil)
            } catch {
                sendResult.finish(error)
            }
        }
        sender.start()
        let received = try readAll(fd)
        if let error = sendResult.wait() { throw error }
        return received
    }
}

extension TCP {
    /// Sends `bytes` on a new connection to `port`, half-closes, and returns all that comes
    /// back before the close (a SOCKS request and its replies, say).
    static func sendThenRead(port: UInt16, _ bytes: [UInt8]) throws -> [UInt8] {
        let fd = try connect(port: port, timeout: 5)
        defer { close(fd) }
        try sendAll(fd, bytes)
        shutdown(fd, Int32(SHUT_WR))
        return try readAll(fd)
    }

    /// How a stream ended for its reader.
    enum Ending: Equatable {
        case endOfFile
        case reset
    }

    /// Like `exchange`, but a reset ends the reading instead of throwing: returns what came
    /// back, how the stream ended, and the client's own port (to find its log line).
    static func exchangeNoticingReset(port: UInt16, _ bytes: [UInt8], timeout: Double = 30) throws -> ([UInt8], Ending, UInt16) {
        let fd = try connect(port: port, timeout: timeout)
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let localPort = UInt16(bigEndian: local.sin_port)
        let sent = Outcome()
        // The sender must be done with the descriptor before it is closed and its number reused.
        defer {
            _ = sent.wait()
            close(fd)
        }
        let sender = Thread {
            // A cut stream fails the sender too; the reader says how it ended.
            try? sendAll(fd, bytes)
            shutdown(fd, Int32(SHUT_WR))
            sent.finish(nil)
        }
        sender.start()
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count == 0 { return (result, .endOfFile, localPort) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return (result, .reset, localPort) }
                throw Failure(description: "recv after \(result.count) bytes on port \(localPort): \(String(cString: strerror(errno)))")
            }
            result.append(contentsOf: buffer[0..<count])
        }
    }
}

/// The result of work on another thread, waited for once.
final class Outcome: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var error: Error?

    func finish(_ error: Error?) {
        self.error = error
        done.signal()
    }

    func wait() -> Error? {
        done.wait()
        return error
    }
}
