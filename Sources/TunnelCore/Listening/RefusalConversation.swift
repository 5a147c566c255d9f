import TunnelConfig

/// What tunneld says to a client it cannot give a tunnel, as that protocol's server would
/// (`refusal = smtp|pop3|imap|http`): the bytes to send at once, and the answer to whatever
/// the client sends next. A pure value: no descriptors, no clock; `RefusalResponder` carries
/// it out, and tests read its bytes.
///
/// - SMTP: the greeting is `421 4.4.0 <reason>`; every command after it gets the same 421,
///   `QUIT` gets `221` and ends it, and so does the `maxCommands`th command.
/// - POP3: `-ERR <reason>`, then the end. IMAP: `* BYE <reason>`, then the end.
/// - HTTP: the request head is read and discarded (at most `maxHeadBytes`), then
///   `502 Bad Gateway` with the reason as a text/plain body (none for `HEAD`), then the end.
struct RefusalConversation: Sendable {
    /// What the responder does next.
    enum Step: Equatable, Sendable {
        /// Send these bytes (perhaps none) and keep reading the client.
        case reply([UInt8])
        /// Send these bytes (perhaps none), then close.
        case finish([UInt8])
    }

    /// The longest reason sent, in bytes; a longer one is cut and ends in `...`.
    static let maxReasonBytes = 200
    /// SMTP commands answered before the responder gives up and closes.
    static let maxCommands = 8
    /// Bytes of one SMTP command kept while its line end has not come; a longer line counts as a command.
    static let maxLineBytes = 1024
    /// Bytes of an HTTP request head read before the reply goes out anyway.
    static let maxHeadBytes = 8192

    let kind: RefusalProtocol
    /// The reason as sent: one line of printable ASCII, at most `maxReasonBytes`.
    let reason: String

    private var buffered: [UInt8] = []
    private var commandsAnswered = 0
    private(set) var isFinished = false

    /// A conversation for `kind` that gives `reason` (escaped and bounded here).
    init(kind: RefusalProtocol, reason: String) {
        self.kind = kind
        self.reason = Self.sanitized(reason)
    }

    /// The conversation for a client of `service` that ended with `outcome`, or `nil` when the
    /// service asks for none or the outcome is not a refusal (a finished or shut-down
    /// connection, or a client's own error).
    init?(service: Service, outcome: ConnectionOutcome) {
        guard service.refusal != .none, let reason = Self.reason(for: outcome, service: service.name) else { return nil }
        self.init(kind: service.refusal, reason: reason)
    }

    /// The one-line reason a refused client is given: the service and the result as its log
    /// line says it, except that an access refusal does not tell the client which rule refused
    /// it. `nil` for outcomes that are not refusals. Results never hold a secret: they name
    /// hosts, users and file paths, never a key, passphrase or password.
    static func reason(for outcome: ConnectionOutcome, service: String) -> String? {
        switch outcome {
        case .ok, .shutdown, .clientError: return nil
        case .access: return "tunneld \(service): access denied"
        case .refused, .sshFailed, .limit: return "tunneld \(service): \(outcome)"
        }
    }

    /// `text` as one line of printable ASCII: control characters escaped, other non-ASCII
    /// characters as `?`, cut to `maxReasonBytes`.
    static func sanitized(_ text: String) -> String {
        var line = ""
        for scalar in ControlCharacters.escaped(text).unicodeScalars {
            line.unicodeScalars.append(scalar.isASCII && scalar.value >= 0x20 && scalar.value < 0x7f ? scalar : "?")
        }
        if line.utf8.count > maxReasonBytes {
            line = String(line.prefix(maxReasonBytes - 3)) + "..."
        }
        return line.isEmpty ? "tunneld cannot open the tunnel" : line
    }

    /// What to send as soon as the client is handed over.
    mutating func opening() -> Step {
        switch kind {
        case .none: return finish([])
        case .smtp: return .reply(smtpRefusal)
        case .pop3: return finish(Self.bytes("-ERR \(reason)\r\n"))
        case .imap: return finish(Self.bytes("* BYE \(reason)\r\n"))
        case .http: return .reply([])
        }
    }

    /// The client sent `bytes`; returns the answer.
    mutating func received(_ bytes: some Collection<UInt8>) -> Step {
        guard !isFinished else { return .finish([]) }
        switch kind {
        case .smtp: return answerCommands(bytes)
        case .http:
            buffered.append(contentsOf: bytes.prefix(Self.maxHeadBytes - buffered.count + 4))
            if Self.endOfHead(in: buffered) || buffered.count >= Self.maxHeadBytes {
                return finish(httpResponse)
            }
            return .reply([])
        case .none, .pop3, .imap: return finish([])
        }
    }

    /// The client closed its side, or its time ran out: HTTP still gets its reply (a client
    /// may half-close after its request); the others have had theirs.
    mutating func ended() -> Step {
        guard !isFinished else { return .finish([]) }
        return finish(kind == .http ? httpResponse : [])
    }

    // MARK: SMTP

    private var smtpRefusal: [UInt8] { Self.bytes("421 4.4.0 \(reason)\r\n") }

    /// Answers each complete command line with the 421, `QUIT` with 221.
    private mutating func answerCommands(_ bytes: some Collection<UInt8>) -> Step {
        var answer: [UInt8] = []
        for byte in bytes {
            if byte != UInt8(ascii: "\n") && buffered.count < Self.maxLineBytes {
                buffered.append(byte)
                continue
            }
            let command = String(decoding: buffered, as: UTF8.self)
                .trimmingASCIIWhitespace().uppercased()
            buffered.removeAll(keepingCapacity: true)
            if command == "QUIT" {
                return finish(answer + Self.bytes("221 2.0.0 \(reason)\r\n"))
            }
            answer += smtpRefusal
            commandsAnswered += 1
            if commandsAnswered >= Self.maxCommands { return finish(answer) }
        }
        return .reply(answer)
    }

    // MARK: HTTP

    private var httpResponse: [UInt8] {
        let body = reason + "\n"
        let isHead = buffered.starts(with: Self.bytes("HEAD "))
        let head = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        return Self.bytes(isHead ? head : head + body)
    }

    /// Whether `bytes` hold a blank line (CRLF CRLF, or bare LF LF as lenient servers accept).
    private static func endOfHead(in bytes: [UInt8]) -> Bool {
        var newlines = 0
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\n"):
                newlines += 1
                if newlines == 2 { return true }
            case UInt8(ascii: "\r"): continue
            default: newlines = 0
            }
        }
        return false
    }

    // MARK: Helpers

    private mutating func finish(_ bytes: [UInt8]) -> Step {
        isFinished = true
        buffered = []
        return .finish(bytes)
    }

    private static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
}

private extension String {
    /// The text without leading and trailing spaces, tabs and CRs.
    func trimmingASCIIWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
