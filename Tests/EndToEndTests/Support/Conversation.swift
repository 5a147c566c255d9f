import Foundation
import Glibc

/// A conversation on `port` that sends a line every 50 ms and checks it comes back,
/// until told to stop; records the slowest round trip and the first failure.
final class Conversation: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var slowestSeconds = 0.0
    private var roundCount = 0
    private var firstFailure: String?
    /// Read under the lock: the conversation's thread writes them.
    var slowest: Double { locked { slowestSeconds } }
    var rounds: Int { locked { roundCount } }
    var failure: String? { locked { firstFailure } }
    private let done = DispatchSemaphore(value: 0)

    init(port: UInt16) {
        Thread { [self] in
            defer { done.signal() }
            do {
                let fd = try TCP.connect(port: port, timeout: 5)
                defer { close(fd) }
                var buffer = [UInt8](repeating: 0, count: 256)
                while !isStopped {
                    let line = Array("round \(rounds)\n".utf8)
                    let started = Date()
                    try TCP.sendAll(fd, line)
                    var received = 0
                    while received < line.count {
                        let count = recv(fd, &buffer, buffer.count, 0)
                        guard count > 0 else { throw TCP.Failure(description: "round \(rounds): connection closed (\(count), \(String(cString: strerror(errno))))") }
                        received += count
                    }
                    record(Date().timeIntervalSince(started))
                    usleep(50_000)
                }
            } catch {
                fail("\(error)")
            }
        }.start()
    }

    private func locked<T>(_ read: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return read()
    }

    private var isStopped: Bool {
        locked { stopped || firstFailure != nil }
    }

    private func record(_ seconds: Double) {
        lock.lock()
        slowestSeconds = max(slowestSeconds, seconds)
        roundCount += 1
        lock.unlock()
    }

    private func fail(_ message: String) {
        lock.lock()
        firstFailure = message
        lock.unlock()
    }

    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
        done.wait()
    }
}
