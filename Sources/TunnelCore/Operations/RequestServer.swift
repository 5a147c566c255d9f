import Glibc
import Platform

/// Serves short exchanges (one request, one answer, then close) on a listening socket from
/// one `poll` loop on its own thread: the control socket and the metrics port. No local client
/// can hold it: each has `requestDeadline` to send its whole request and `answerDeadline` to
/// take the answer, at most `maximumClients` are held at once, and a client that arrives when
/// all are taken pushes out the oldest one still sending its request (else the oldest).
/// With no client the loop sleeps in `poll` without a timeout.
final class RequestServer: @unchecked Sendable {
    /// Bounds on what one client may cost.
    struct Limits: Sendable {
        /// Seconds from accept to the whole request.
        var requestDeadline: Double = 1
        /// Seconds from the whole request to the whole answer taken.
        var answerDeadline: Double = 5
        /// Clients held at once.
        var maximumClients = 64
        /// Bytes a request may have; a longer one is answered as it stands.
        var maximumRequest: Int
    }

    /// Whether `request` (the bytes so far) is whole.
    typealias Framing = @Sendable (_ request: [UInt8]) -> Bool
    /// The answer to a whole request, or nil to close the client without one; `peer` is the
    /// client's address (`sockaddr_storage`, empty for a Unix socket).
    typealias Respond = @Sendable (_ request: [UInt8], _ peer: sockaddr_storage) -> [UInt8]?

    private struct Client {
        let fd: Int32
        let peer: sockaddr_storage
        let acceptedAt: Double
        var deadline: Double
        var request: [UInt8] = []
        /// The answer and how much of it is sent, once the request is whole.
        var answer: [UInt8]?
        var sent = 0
    }

    private let listening: Int32
    private let limits: Limits
    private let isWhole: Framing
    private let respond: Respond
    private var clients: [Client] = []

    /// Serves `listening` (made non-blocking here) once `start()` is called.
    init(listening: Int32, limits: Limits, isWhole: @escaping Framing, respond: @escaping Respond) {
        self.listening = listening
        self.limits = limits
        self.isWhole = isWhole
        self.respond = respond
        Socket.setNonBlocking(listening)
    }

    /// Runs the loop on a thread named `name` until the listening socket is shut down.
    func start(name: String) {
        DetachedThread.start(name: name) { [self] in run() }
    }

    private static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: listening, events: Int16(POLLIN), revents: 0)]
            for client in clients {
                fds.append(pollfd(fd: client.fd, events: Int16(client.answer == nil ? POLLIN : POLLOUT), revents: 0))
            }
            let timeout: Int32
            if let nearest = clients.map(\.deadline).min() {
                timeout = Int32(max(0, min(60_000, ((nearest - Self.now()) * 1000).rounded(.up))))
            } else {
                timeout = -1
            }
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 && errno != EINTR { break }
            let now = Self.now()
            // Clients first, by descriptor: accepting may drop some and shift the list.
            var index = 0
            for entry in fds.dropFirst() {
                defer { index += 1 }
                guard entry.revents != 0 else { continue }
                serve(&clients[index], events: entry.revents, buffer: &buffer)
            }
            clients.removeAll { client in
                let isOver = client.fd < 0 || client.deadline <= now
                if isOver && client.fd >= 0 { close(client.fd) }
                return isOver
            }
            if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                guard acceptAll(now: now) else { break }
            }
        }
        for client in clients { close(client.fd) }
        clients = []
    }

    /// Reads a request or sends an answer; marks the client done (fd -1, closed) when it is.
    private func serve(_ client: inout Client, events: Int16, buffer: inout [UInt8]) {
        if client.answer == nil {
            let count = recv(client.fd, &buffer, min(buffer.count, limits.maximumRequest - client.request.count), Int32(MSG_DONTWAIT))
            if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
            if count > 0 { client.request += buffer[0..<count] }
            let ended = count <= 0
            guard ended || isWhole(client.request) || client.request.count >= limits.maximumRequest else { return }
            if ended && client.request.isEmpty {
                finish(&client)
                return
            }
            guard let answer = respond(client.request, client.peer), !answer.isEmpty else {
                finish(&client)
                return
            }
            client.answer = answer
            client.deadline = Self.now() + limits.answerDeadline
        }
        guard let answer = client.answer else { return }
        let sent = answer.withUnsafeBytes { send(client.fd, $0.baseAddress! + client.sent, answer.count - client.sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        if sent < 0 && (errno == EAGAIN || errno == EINTR) { return }
        if sent > 0 { client.sent += sent }
        if sent <= 0 || client.sent == answer.count { finish(&client) }
    }

    private func finish(_ client: inout Client) {
        close(client.fd)
        client = Client(fd: -1, peer: client.peer, acceptedAt: client.acceptedAt, deadline: 0)
    }

    /// Accepts every waiting client; returns false when the listening socket is gone.
    private func acceptAll(now: Double) -> Bool {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listening, $0, &length) }
            }
            if fd >= 0 {
                // Not inherited by `ssh -G`, which a reload may start meanwhile.
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                Socket.setNonBlocking(fd)
            }
            if fd < 0 {
                switch errno {
                case EAGAIN, EINTR, ECONNABORTED: return true
                // Out of descriptors: poll wakes again while the client waits in the backlog;
                // dropping the oldest held client frees one.
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    dropOldest()
                    return true
                default: return false
                }
            }
            if clients.count >= limits.maximumClients { dropOldest() }
            clients.append(Client(fd: fd, peer: storage, acceptedAt: now, deadline: now + limits.requestDeadline))
        }
    }

    /// Closes the oldest client still sending its request, else the oldest of all.
    private func dropOldest() {
        guard !clients.isEmpty else { return }
        let index = clients.indices.first { clients[$0].answer == nil } ?? clients.startIndex
        close(clients[index].fd)
        clients.remove(at: index)
    }
}
