import Glibc

/// Threads made with pthread_create: each runs one closure, detached, under a name.
public enum DetachedThread {
    /// Runs `body` on a new detached thread named `name` (as `ps -L` shows it; a name over
    /// 15 bytes is not set). If the system cannot make a thread, `body` does not run and
    /// the result is false.
    @discardableResult
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
        let work = Unmanaged.passRetained(Work(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        guard pthread_create(&thread, nil, runWork, work) == 0 else {
            Unmanaged<Work>.fromOpaque(work).release()
            return false
        }
        pthread_detach(thread)
        return true
    }

    /// Sets the calling thread's name through /proc/thread-self/comm, if it fits the
    /// kernel's 15 bytes.
    fileprivate static func nameThisThread(_ name: String) {
        guard name.utf8.count <= 15 else { return }
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = name.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// What a new thread runs, passed to it through pthread_create's context pointer.
    fileprivate final class Work: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void

        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
}

/// A new thread's entry point: takes its `Work` back from the context pointer and runs it.
private func runWork(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let work = Unmanaged<DetachedThread.Work>.fromOpaque(context!).takeRetainedValue()
    DetachedThread.nameThisThread(work.name)
    work.body()
    return nil
}
