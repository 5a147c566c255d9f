import Glibc
import TunnelConfig

/// The server side of a SOCKS5 handshake (RFC 1928) as a value fed the client's bytes:
/// SOCKS5 only, the no-authentication method only, CONNECT only.
///
/// Each `feed` says what to do next. The client may send its bytes one at a time or the
/// greeting, request and first data in one read; either way the handshake buffers at most
/// one message (2 + 255 greeting bytes, 4 + 1 + 255 + 2 request bytes), and bytes after the
/// request are handed back as leftover, never kept.
struct SocksHandshake: Sendable {
    /// The REP field of a reply (RFC 1928 section 6).
    enum ReplyCode: UInt8, Sendable {
        case succeeded = 0
        case generalFailure = 1
        case notAllowed = 2
        case networkUnreachable = 3
        case hostUnreachable = 4
        case connectionRefused = 5
        case ttlExpired = 6
        case commandNotSupported = 7
        case addressTypeNotSupported = 8
    }

    /// Where the client asked to connect.
    struct Target: Equatable, Sendable, CustomStringConvertible {
        /// The DST.ADDR of a request, by its address type.
        enum Address: Equatable, Sendable {
            /// Four bytes, network order.
            case ipv4([UInt8])
            /// Sixteen bytes, network order.
            case ipv6([UInt8])
            /// A name as the client sent it, for the SSH server to resolve.
            case domain(String)
        }

        var address: Address
        var port: UInt16

        /// The host for the SSH `direct-tcpip` request: dotted IPv4, IPv6 in inet_ntop's
        /// canonical form (`2001:db8::1`), a domain as sent.
        var host: String {
            switch address {
            case .ipv4(let bytes): bytes.map(String.init).joined(separator: ".")
            case .ipv6(let bytes): Self.ipv6Text(bytes)
            case .domain(let name): name
            }
        }

        /// `example.org:443`, `192.0.2.1:80`, `[2001:db8::1]:443`: a host with a colon is
        /// bracketed.
        var description: String {
            let host = host
            return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }

        /// The canonical text of a 16-byte IPv6 address.
        private static func ipv6Text(_ bytes: [UInt8]) -> String {
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            return text.withUnsafeMutableBufferPointer { buffer in
                guard let written = inet_ntop(AF_INET6, &address, buffer.baseAddress, socklen_t(buffer.count)) else {
                    preconditionFailure("inet_ntop cannot fail for AF_INET6 with INET6_ADDRSTRLEN bytes")
                }
                return String(cString: written)
            }
        }
    }

    /// What to do after a `feed`.
    enum Step: Equatable, Sendable {
        /// Keep reading; nothing to send yet.
        case needMore
        /// Send these bytes (the method-selection reply), then keep reading.
        case send([UInt8])
        /// The request is complete. Send `send` now (the method-selection reply when the
        /// greeting came in the same read as the request, else nothing), open a channel to
        /// `target`, then send `reply(.succeeded)` and pass `leftover` (what the client sent
        /// after the request) into the channel, or send `reply(errorCode(...))` and close.
        case connect(target: Target, send: [UInt8], leftover: [UInt8])
        /// Send `reply` (empty when the client cannot be answered, as for a wrong version
        /// in the greeting) and close; `reason` is a sentence for the log.
        case refuse(reply: [UInt8], reason: String)
    }

    /// Which message the bytes in `message` belong to.
    private enum Phase: Sendable {
        case greeting
        case request
        case ended
    }

    /// What one message amounts to so far.
    private enum Verdict {
        case incomplete
        case refused(reply: [UInt8], reason: String)
        case greetingAccepted
        case requestComplete(Target)
    }

    private var phase = Phase.greeting
    /// The bytes of the current message; never more than the message can hold.
    private var message: [UInt8] = []

    /// The method-selection reply choosing "no authentication".
    static let methodAccepted: [UInt8] = [5, 0]
    /// The method-selection reply refusing every method the client offered.
    static let noAcceptableMethod: [UInt8] = [5, 0xFF]

    /// The 10-byte reply to a request: `05 REP 00 01` and the bound address 0.0.0.0:0.
    static func reply(_ code: ReplyCode) -> [UInt8] {
        [5, code.rawValue, 0, 1, 0, 0, 0, 0, 0, 0]
    }

    /// The reply for a channel open the SSH server refused, from libssh2's reason text
    /// (with or without its "Channel open failure (...)" wrapping): "administratively
    /// prohibited" is `notAllowed`, "connect failed" (OpenSSH's word for a refused and for
    /// an unreachable target alike) is `connectionRefused`, anything else `hostUnreachable`.
    /// The failure reply for a connection that ends before its channel opened.
    static func replyCode(for outcome: ConnectionOutcome) -> ReplyCode {
        switch outcome {
        case .ok: return .succeeded
        case .refused(let reason): return errorCode(forOpenFailure: reason)
        case .access: return .notAllowed
        case .sshFailed(let reason) where reason.contains("did not answer the channel open"): return errorCodeForExpiredOpen
        case .sshFailed, .clientError, .shutdown, .limit: return .generalFailure
        }
    }

    static func errorCode(forOpenFailure reason: String) -> ReplyCode {
        if reason.contains("administratively prohibited") { return .notAllowed }
        if reason.contains("connect failed") { return .connectionRefused }
        return .hostUnreachable
    }

    /// The reply for a channel open that got no answer in time. Not `ttlExpired`: that code
    /// reports an IP packet whose TTL ran out (a routing loop), which did not happen, and an
    /// unanswered open may say nothing about the target at all (a busy session, a stalled
    /// server); `hostUnreachable` claims only that the target could not be reached.
    static let errorCodeForExpiredOpen = ReplyCode.hostUnreachable

    /// A handshake waiting for the client's greeting.
    init() {}

    /// Takes the bytes just read from the client and says what to do. After a `connect`
    /// or a `refuse` the handshake is over: feeding more refuses without a reply.
    mutating func feed(_ bytes: some Collection<UInt8>) -> Step {
        guard phase != .ended else {
            return .refuse(reply: [], reason: "the SOCKS handshake had already ended")
        }
        // The method-selection reply owed from a greeting completed in this read.
        var owed: [UInt8] = []
        var index = bytes.startIndex
        while index != bytes.endIndex {
            message.append(bytes[index])
            bytes.formIndex(after: &index)
            switch phase == .greeting ? greetingVerdict() : requestVerdict() {
            case .incomplete:
                continue
            case .greetingAccepted:
                phase = .request
                message = []
                owed = Self.methodAccepted
            case .refused(let reply, let reason):
                end()
                return .refuse(reply: owed + reply, reason: reason)
            case .requestComplete(let target):
                end()
                return .connect(target: target, send: owed, leftover: Array(bytes[index...]))
            }
        }
        return owed.isEmpty ? .needMore : .send(owed)
    }

    /// Ends the handshake and lets go of its buffer.
    private mutating func end() {
        phase = .ended
        message = []
    }

    /// Judges `05 NMETHODS METHODS...` as far as it has arrived.
    private func greetingVerdict() -> Verdict {
        let version = message[0]
        guard version == 5 else {
            let reason = version == 4
                ? "SOCKS version 4 is not supported; use SOCKS5"
                : "the client does not speak SOCKS5 (its first byte is \(version)); use SOCKS5"
            return .refused(reply: [], reason: reason)
        }
        guard message.count >= 2 else { return .incomplete }
        let methodCount = Int(message[1])
        guard message.count == 2 + methodCount else { return .incomplete }
        return message[2...].contains(0) ? .greetingAccepted : noMethodRefusal
    }

    private var noMethodRefusal: Verdict {
        .refused(reply: Self.noAcceptableMethod,
                 reason: "the client offers no method tunneld supports (no authentication)")
    }

    /// Judges `05 CMD 00 ATYP DST.ADDR DST.PORT` as far as it has arrived: each field is
    /// judged as soon as it is in.
    private func requestVerdict() -> Verdict {
        guard message[0] == 5 else {
            return refused(.generalFailure, "the request has SOCKS version \(message[0]), not 5")
        }
        guard message.count >= 2 else { return .incomplete }
        guard message[1] == 1 else {
            let command = switch message[1] {
            case 2: "BIND"
            case 3: "UDP ASSOCIATE"
            default: "command \(message[1])"
            }
            return refused(.commandNotSupported, "the client asks for \(command); tunneld supports only CONNECT")
        }
        guard message.count >= 3 else { return .incomplete }
        guard message[2] == 0 else {
            return refused(.generalFailure, "the request's reserved byte is \(message[2]), not 0")
        }
        guard message.count >= 4 else { return .incomplete }
        let addressLength: Int
        switch message[3] {
        case 1:
            addressLength = 4
        case 4:
            addressLength = 16
        case 3:
            guard message.count >= 5 else { return .incomplete }
            guard message[4] > 0 else { return refused(.generalFailure, "the client asks for an empty domain name") }
            addressLength = 1 + Int(message[4])
        default:
            return refused(.addressTypeNotSupported, "address type \(message[3]) is not supported")
        }
        let portStart = 4 + addressLength
        guard message.count == portStart + 2 else { return .incomplete }

        let addressBytes = Array(message[4..<portStart])
        let address: Target.Address
        switch message[3] {
        case 1: address = .ipv4(addressBytes)
        case 4: address = .ipv6(addressBytes)
        default:
            let nameBytes = addressBytes.dropFirst()
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                return refused(.generalFailure, "the domain name the client asks for is not UTF-8")
            }
            guard !name.unicodeScalars.contains(where: ControlCharacters.isControl) else {
                return refused(.generalFailure, "the client asks for '\(name)', which contains a control character")
            }
            guard HostSyntax.isHostName(name) else {
                return refused(.generalFailure, "the client asks for '\(name)', which is not a host name (letters, digits, -, _ and dots)")
            }
            address = .domain(name)
        }
        let port = UInt16(message[portStart]) << 8 | UInt16(message[portStart + 1])
        guard port != 0 else { return refused(.generalFailure, "the client asks for port 0") }
        return .requestComplete(Target(address: address, port: port))
    }

    /// A refused request, answered with `code`.
    private func refused(_ code: ReplyCode, _ reason: String) -> Verdict {
        .refused(reply: Self.reply(code), reason: reason)
    }
}
