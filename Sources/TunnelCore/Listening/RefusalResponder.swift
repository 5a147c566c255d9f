import Glibc
import Platform
import TunnelConfig

/// Tells refused clients why, in their own protocol, on one thread of its own: a session loop
/// or the listener hands a client over and goes on at once, never waiting on it.
///
/// Each client costs a few hundred bytes and at most `timeLimit`: its conversation's bytes
/// are written as the socket takes them; when the conversation is over the socket is shut
/// for writing and read until the client closes (so the reply is not lost to a reset), then
/// closed. At most `capacity` clients are answered at once; past that a client is closed at
/// once, as it would be with `refusal = none`. The thread starts with the first client.
final class RefusalResponder: @unchecked Sendable {
    /// The responder every connection's end goes through.
    static let shared = RefusalResponder()

    /// How many clients are answered at once.
    let capacity: Int
    /// How long one client may take, from hand-over to close.
    let timeLimit: Duration

    /// Reads of one client in one pass of the loop.
    private static let readsPerPass = 16

    private let inbox = Locked(Inbox())
    private let wakeup: Wakeup?

    private struct Inbox {
        var arrivals: [Client] = []
        /// Clients handed over and not yet closed, arrivals included.
        var count = 0
        var isRunning = false
    }

    /// A responder answering at most `capacity` clients at once, each for at most `timeLimit`.
    init(capacity: Int = 64, timeLimit: Duration = .seconds(5)) {
        self.capacity = capacity
        self.timeLimit = timeLimit
        wakeup = try? Wakeup()
    }

    /// Closes a client's end: first telling it why, when `service` asks for a refusal
    /// protocol and `outcome` is a refusal; otherwise, or when the responder is full, at once.
    /// Never blocks.
    func close(_ end: ClientEnd, after outcome: ConnectionOutcome, service: Service) {
        guard let conversation = RefusalConversation(service: service, outcome: outcome) else {
            end.close()
            return
        }
        answer(end, with: conversation)
    }

    /// Hands `end` over to be answered with `conversation`; closes it at once when full.
    func answer(_ end: ClientEnd, with conversation: RefusalConversation) {
        guard let wakeup else {
            end.close()
            return
        }
        let client = Client(end: end, conversation: conversation, deadline: .now + timeLimit)
        let (isAccepted, mustStart) = inbox.withLock { inbox -> (Bool, Bool) in
            guard inbox.count < capacity else { return (false, false) }
            inbox.count += 1
            inbox.arrivals.append(client)
            defer { inbox.isRunning = true }
            return (true, !inbox.isRunning)
        }
        guard isAccepted else {
            end.close()
            return
        }
        if mustStart {
            DetachedThread.start(name: "refusals") { [self] in run(wakeup) }
        }
        wakeup.signal()
    }

    /// How many clients are being answered now (for tests).
    var activeCount: Int { inbox.withLock { $0.count } }

    // MARK: The thread

    /// One client being answered.
    private struct Client {
        let end: ClientEnd
        var conversation: RefusalConversation
        let deadline: ContinuousClock.Instant
        var outgoing: [UInt8] = []
        var isStarted = false
        /// The conversation is over: send what is left, then wait for the client's EOF.
        var isClosing = false
        var isOutputShut = false
        /// The client sent EOF: poll it for writing only.
        var isInputDone = false
    }

    private func run(_ wakeup: Wakeup) {
        var clients: [Client] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            clients += inbox.withLock { inbox in
                defer { inbox.arrivals.removeAll() }
                return inbox.arrivals
            }
            var index = 0
            while index < clients.count {
                if advance(&clients[index], buffer: &buffer) {
                    index += 1
                } else {
                    let done = clients.remove(at: index)
                    inbox.withLock { $0.count -= 1 }
                    done.end.close()
                }
            }
            var fds = [pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)]
            var nearest = ContinuousClock.Instant.now + timeLimit
            for client in clients {
                nearest = min(nearest, client.deadline)
                let readEvents = client.isInputDone ? Int16(0) : Int16(POLLIN)
                let writeEvents = client.outgoing.isEmpty ? Int16(0) : Int16(POLLOUT)
                if client.end.input == client.end.output {
                    fds.append(pollfd(fd: client.end.input, events: readEvents | writeEvents, revents: 0))
                } else {
                    fds.append(pollfd(fd: client.end.input, events: readEvents, revents: 0))
                    fds.append(pollfd(fd: client.end.output, events: writeEvents, revents: 0))
                }
            }
            let timeout = clients.isEmpty ? -1 : Socket.milliseconds(until: nearest)
            let result = poll(&fds, nfds_t(fds.count), timeout)
            if result < 0 && errno != EINTR { usleep(10_000) }
            if fds[0].revents != 0 { wakeup.drain() }
        }
    }

    /// Moves one client on as far as it goes without waiting (at most `readsPerPass` reads,
    /// so a client that floods cannot hold the thread). Returns `false` when it is done and
    /// must be closed.
    private func advance(_ client: inout Client, buffer: inout [UInt8]) -> Bool {
        if ContinuousClock.now >= client.deadline {
            if !client.isClosing {
                // Whatever the conversation still has to say (HTTP's reply) gets one try.
                take(client.conversation.ended(), into: &client)
                flush(&client)
            }
            return false
        }
        if !client.isStarted {
            client.isStarted = true
            take(client.conversation.opening(), into: &client)
        }
        for _ in 0..<Self.readsPerPass {
            if flush(&client) == true { return false }
            if client.isClosing && client.outgoing.isEmpty {
                if client.isInputDone { return false }
                if !client.isOutputShut {
                    client.isOutputShut = true
                    // A pipe cannot be half-closed: a `--stdio` client is simply closed.
                    guard client.end.input == client.end.output else { return false }
                    shutdown(client.end.output, Int32(SHUT_WR))
                }
            }
            if client.isInputDone { return true }
            let read = buffer.withUnsafeMutableBytes { DescriptorIO.read(client.end.input, into: $0) }
            switch read {
            case .wouldBlock:
                return true
            case .failed:
                return false
            case .endOfFile:
                client.isInputDone = true
                if !client.isClosing { take(client.conversation.ended(), into: &client) }
            case .bytes(let count):
                // Once the conversation is over, the client's bytes are read only to be dropped.
                if !client.isClosing { take(client.conversation.received(buffer[0..<count]), into: &client) }
            }
        }
        return true
    }

    /// Queues a step's bytes; a `finish` step starts the closing.
    private func take(_ step: RefusalConversation.Step, into client: inout Client) {
        switch step {
        case .reply(let bytes):
            client.outgoing += bytes
        case .finish(let bytes):
            client.outgoing += bytes
            client.isClosing = true
        }
    }

    /// Writes what the client takes. Returns `true` on a hard error, `false` when all or
    /// some went, `nil` when nothing was pending.
    @discardableResult
    private func flush(_ client: inout Client) -> Bool? {
        guard !client.outgoing.isEmpty else { return nil }
        let result = client.outgoing.withUnsafeBytes { DescriptorIO.write(client.end.output, $0) }
        switch result {
        case .wrote(let count):
            client.outgoing.removeFirst(count)
            return false
        case .wouldBlock:
            return false
        case .failed:
            client.outgoing = []
            return true
        }
    }
}
