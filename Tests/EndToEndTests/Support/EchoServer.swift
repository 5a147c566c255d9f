import Foundation
import Glibc

/// A target server on 127.0.0.1 that sends back what it receives and half-closes after the
/// client does; with `greeting`, it first sends that line (like an SMTP or SIP2 server).
final class EchoServer {
    let port: UInt16
    private let listener: Int32
    private let greeting: String?
    private let lock = NSLock()
    private var accepted = 0
    private var stopped = false

    init(greeting: String? = nil) throws {
        (listener, port) = try TCP.listen()
        self.greeting = greeting
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    deinit {
        stop()
    }

    /// How many connections it accepted.
    var connectionCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return accepted
    }

    func stop() {
        lock.lock()
        let wasStopped = stopped
        stopped = true
        lock.unlock()
        if !wasStopped {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
        }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            lock.lock()
            accepted += 1
            lock.unlock()
            let thread = Thread { [greeting] in
                Self.serve(fd, greeting: greeting)
            }
            thread.start()
        }
    }

    private static func serve(_ fd: Int32, greeting: String?) {
        defer { close(fd) }
        if let greeting {
            try? TCP.sendAll(fd, Array((greeting + "\r\n").utf8))
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            var offset = 0
            while offset < count {
                let sent = buffer.withUnsafeBytes { send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 {
                    if sent < 0 && errno == EINTR { continue }
                    return
                }
                offset += sent
            }
        }
        shutdown(fd, Int32(SHUT_WR))
    }
}
