import Glibc
import Platform

/// What one session's loop waits on, in epoll sets, at a cost proportional to what is ready:
/// the wake-up pipe, the session socket, and its clients' descriptors.
///
/// The clients' input descriptors are in a set of their own, nested in the main one, so that
/// reading every client is paused and resumed with one call while the session's output is
/// above its high-water mark; their output descriptors are in another, never paused. A
/// client's interest changes (one `epoll_ctl`) only when what it waits for changes.
final class SessionReadiness {
    /// What the last `wait` found.
    struct Found {
        /// The wake-up pipe was signalled.
        var isWoken = false
        /// The session socket's events, in `poll` bits (EPOLLIN and POLLIN are the same bits).
        var session: Int16 = 0
        /// Clients that are ready, by slot, with their events in `poll` bits.
        var clients: [(slot: Int, events: Int16)] = []
    }

    /// What one client is registered for, kept by its owner.
    struct ClientRegistration {
        var input = EventPoll.Registration()
        var output = EventPoll.Registration()
        /// A descriptor epoll cannot wait on (a regular file): treated as ready in every pass.
        var isAlwaysReady: Bool { input.isAlwaysReady || output.isAlwaysReady }
    }

    private enum Token: UInt64 {
        case wakeup, session, clientInput, clientOutput
    }

    private let main: EventPoll
    private let clientInput: EventPoll
    private let clientOutput: EventPoll
    private var sessionRegistration = EventPoll.Registration()
    private var inputSetRegistration = EventPoll.Registration()
    private var wakeupRegistration = EventPoll.Registration()
    private var outputSetRegistration = EventPoll.Registration()
    private var found = Found()

    /// Throws when the process is out of descriptors (the session then cannot start).
    init(wakeup: Int32) throws(Errno) {
        main = try EventPoll(capacity: 8)
        clientInput = try EventPoll(capacity: 512)
        clientOutput = try EventPoll(capacity: 512)
        main.update(wakeup, token: Token.wakeup.rawValue, to: .readable, registration: &wakeupRegistration)
        main.update(clientOutput.descriptor, token: Token.clientOutput.rawValue, to: .readable, registration: &outputSetRegistration)
        main.update(clientInput.descriptor, token: Token.clientInput.rawValue, to: .readable, registration: &inputSetRegistration)
    }

    /// What to wait for on the session socket, in `poll` bits (POLLIN, POLLOUT).
    func watchSession(_ socket: Int32, events: Int16) {
        main.update(socket, token: Token.session.rawValue, to: EventPoll.Interest(rawValue: UInt32(UInt16(bitPattern: events))), registration: &sessionRegistration)
    }

    /// Whether clients are read at all (false while the session's output is too far behind).
    func readClients(_ allowed: Bool) {
        main.update(clientInput.descriptor, token: Token.clientInput.rawValue, to: allowed ? .readable : [], registration: &inputSetRegistration)
    }

    /// Makes client `slot` wait for input on `input` and for room on `output` as asked.
    func watchClient(_ slot: Int, input: Int32, wantsInput: Bool, output: Int32, wantsOutput: Bool, registration: inout ClientRegistration) {
        clientInput.update(input, token: UInt64(slot), to: wantsInput ? .readable : [], registration: &registration.input)
        clientOutput.update(output, token: UInt64(slot), to: wantsOutput ? .writable : [], registration: &registration.output)
    }

    /// Stops waiting on a client, before its descriptors are closed.
    func forgetClient(input: Int32, output: Int32, registration: inout ClientRegistration) {
        clientInput.remove(input, registration: &registration.input)
        clientOutput.remove(output, registration: &registration.output)
    }

    /// Waits up to `timeout` milliseconds (-1: no bound) and returns what is ready. A nested
    /// set reports at most its capacity per wait; the rest stay ready for the next one.
    func wait(timeout: Int32) -> Found {
        found.isWoken = false
        found.session = 0
        found.clients.removeAll(keepingCapacity: true)
        var inputReady = false
        var outputReady = false
        main.wait(timeout: timeout) { ready in
            switch Token(rawValue: ready.token) {
            case .wakeup: found.isWoken = true
            case .session: found.session = Int16(truncatingIfNeeded: ready.events)
            case .clientInput: inputReady = true
            case .clientOutput: outputReady = true
            case nil: break
            }
        }
        if inputReady {
            clientInput.wait(timeout: 0) { found.clients.append((Int($0.token), Int16(truncatingIfNeeded: $0.events))) }
        }
        if outputReady {
            clientOutput.wait(timeout: 0) { found.clients.append((Int($0.token), Int16(truncatingIfNeeded: $0.events))) }
        }
        return found
    }
}
