import CLibSSH2

/// A failure reported by libssh2 or by the socket under it, with the function that failed.
public struct SSHError: Error, CustomStringConvertible, Sendable {
    /// The `LIBSSH2_ERROR_*` code, or 0 for failures that are not libssh2's.
    public var code: Int32
    /// libssh2's own text, or ours.
    public var message: String
    /// The C function (or step) that failed.
    public var function: String

    public init(code: Int32, message: String, function: String) {
        self.code = code
        self.message = message
        self.function = function
    }

    public var description: String { message }
}

/// Why one channel open failed while its session is fine.
public enum ChannelOpenFailure: Error, Equatable, Sendable {
    /// The server refused it, e.g. "administratively prohibited" or "connect failed".
    case refused(reason: String)
    /// libssh2 stopped waiting for the server's answer (after 60 s); the server may still
    /// answer later, and libssh2 then drops the answer.
    case unanswered
}

/// Makes sure `libssh2_init` has run once before any session is made.
enum SSHLibrary {
    private static let initialized: Bool = {
        libssh2_init(0) == 0
    }()

    static func initialize() {
        precondition(initialized, "libssh2_init failed")
    }
}
