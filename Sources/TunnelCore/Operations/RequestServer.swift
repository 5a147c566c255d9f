import Glibc
import Platform

/// Serves short exchanges (one request, one answer, then close) on a listening socket from
/// one epoll loop on its own thread: the control socket and the metrics port. No local client
/// can hold it: each has `requestDeadline` to send its whole request and `answerDeadline` to
/// take the answer, at most `maximumClients` are held at once, and a client that arrives when
/// all are taken pushes out the oldest one still sending its request (else the oldest).
/// A pass serves the ready clients only; a client's interest changes once, when it turns
/// from reading its request to writing its answer. Deadlines are found among the held
/// clients, which `maximumClients` bounds. With no client the loop sleeps without a timeout.
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
        var deadline: Double
        var request: [UInt8] = []
        /// The answer and how much of it is sent, once the request is whole.
        var answer: [UInt8]?
        var sent = 0
        var registration = EventPoll.Registration()
        /// Whether the exchange is over (answered, or the client left).
        var isDone = false

        /// Reading the request, then writing the answer.
        var interest: EventPoll.Interest { answer == nil ? .readable : .writable }
    }

    private let listening: Int32
    private let events: EventPoll
    private let limits: Limits
    private let isWhole: Framing
    private let respond: Respond
    /// The held clients by their token in `events` (0 is the listening socket's).
    private var clients: [UInt64: Client] = [:]
    private var nextToken: UInt64 = 1

    /// Serves `listening` (made non-blocking here) once `start()` is called, waiting in
    /// `events`, a set of its own (made where the socket is bound, so that a shortage of
    /// descriptors shows there).
    init(listening: Int32, events: EventPoll, limits: Limits, isWhole: @escaping Framing, respond: @escaping Respond) {
        self.listening = listening
        self.events = events
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

    private static let listeningToken: UInt64 = 0

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var listeningRegistration = EventPoll.Registration()
        events.update(listening, token: Self.listeningToken, to: .readable, registration: &listeningRegistration)
        var ready: [EventPoll.Ready] = []
        while true {
            let timeout: Int32
            if let nearest = clients.values.map(\.deadline).min() {
                timeout = Int32(max(0, min(60_000, ((nearest - Self.now()) * 1000).rounded(.up))))
            } else {
                timeout = -1
            }
            ready.removeAll(keepingCapacity: true)
            events.wait(timeout: timeout) { ready.append($0) }
            var hasArrivals = false
            for event in ready {
                guard event.token != Self.listeningToken else {
                    hasArrivals = true
                    continue
                }
                guard var client = clients[event.token] else { continue }
                serve(&client, buffer: &buffer)
                if client.isDone {
                    drop(event.token)
                } else {
                    events.update(client.fd, token: event.token, to: client.interest, registration: &client.registration)
                    clients[event.token] = client
                }
            }
            let now = Self.now()
            for (token, client) in clients where client.deadline <= now { drop(token) }
            if hasArrivals {
                guard acceptAll(now: now) else { break }
            }
        }
        for token in Array(clients.keys) { drop(token) }
        events.remove(listening, registration: &listeningRegistration)
    }

    /// Reads a request or sends an answer; marks the client done when it is.
    private func serve(_ client: inout Client, buffer: inout [UInt8]) {
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
        client.isDone = true
    }

    /// Stops waiting for the client of `token` and closes it.
    private func drop(_ token: UInt64) {
        guard var client = clients.removeValue(forKey: token) else { return }
        events.remove(client.fd, registration: &client.registration)
        close(client.fd)
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
                // Out of descriptors: the socket stays ready while the client waits in the
                // backlog; dropping the oldest held client frees one.
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    dropOldest()
                    return true
                default: return false
                }
            }
            if clients.count >= limits.maximumClients { dropOldest() }
            let token = nextToken
            nextToken += 1
            var client = Client(fd: fd, peer: storage, deadline: now + limits.requestDeadline)
            events.update(fd, token: token, to: client.interest, registration: &client.registration)
            clients[token] = client
        }
    }

    /// Closes the oldest client still sending its request, else the oldest of all.
    private func dropOldest() {
        // Tokens grow with each accept: the smallest is the oldest.
        guard let token = clients.filter({ $0.value.answer == nil }).keys.min() ?? clients.keys.min() else { return }
        drop(token)
    }
}
