import CLibSSH2
import Glibc

/// Password and keyboard-interactive login, and the list of methods the server offers.
extension SSHSession {
    /// The authentication methods the server offers `user` (`publickey`, `password`, ...),
    /// asked with a `none` request. Returns `nil` while it would block, and `[]` when the
    /// server let the user in without authentication (`isAuthenticated` is then true).
    public func authenticationMethods(user: String) throws -> [String]? {
        if let list = libssh2_userauth_list(raw, user, UInt32(user.utf8.count)) {
            return String(cString: list).split(separator: ",").map(String.init)
        }
        if libssh2_userauth_authenticated(raw) != 0 { return [] }
        let code = libssh2_session_last_errno(raw)
        if code == LIBSSH2_ERROR_EAGAIN { return nil }
        throw error(code, "libssh2_userauth_list")
    }

    /// Whether the server has accepted a login.
    public var isAuthenticated: Bool { libssh2_userauth_authenticated(raw) != 0 }

    /// Logs in with `password` (method `password`). Returns `nil` while it would block,
    /// `true` when accepted, `false` when the server refused the password; throws when the
    /// session failed. The password is not kept and never put in an error.
    public func authenticate(user: String, password: String) throws -> Bool? {
        let code = libssh2_userauth_password_ex(raw, user, UInt32(user.utf8.count), password, UInt32(password.utf8.count), nil)
        switch code {
        case 0: return true
        case LIBSSH2_ERROR_EAGAIN: return nil
        case LIBSSH2_ERROR_AUTHENTICATION_FAILED, LIBSSH2_ERROR_PASSWORD_EXPIRED: return false
        default: throw error(code, "libssh2_userauth_password_ex")
        }
    }

    /// Logs in with method `keyboard-interactive`, answering every prompt of the server's
    /// first round that has prompts with `password`; a later round (the server asking again)
    /// gets empty answers, so the password is offered once per call. Returns `nil` while it
    /// would block (call again with the same arguments), else the outcome.
    public func authenticateInteractively(user: String, password: String) throws -> KeyboardInteractiveOutcome? {
        if keyboardInteractive == nil { keyboardInteractive = KeyboardInteractiveState(password: Array(password.utf8)) }
        let code = libssh2_userauth_keyboard_interactive_ex(raw, user, UInt32(user.utf8.count), keyboardInteractiveResponder)
        if code == LIBSSH2_ERROR_EAGAIN { return nil }
        let wasAsked = keyboardInteractive?.rounds ?? 0 > 0
        keyboardInteractive = nil
        switch code {
        case 0: return .accepted
        case LIBSSH2_ERROR_AUTHENTICATION_FAILED, LIBSSH2_ERROR_PASSWORD_EXPIRED:
            return wasAsked ? .refused : .notAsked
        default: throw error(code, "libssh2_userauth_keyboard_interactive_ex")
        }
    }

    /// Fills `responses` for one round of prompts; called by libssh2 through the callback.
    fileprivate func answer(prompts count: Int, responses: UnsafeMutablePointer<LIBSSH2_USERAUTH_KBDINT_RESPONSE>) {
        guard count > 0, var state = keyboardInteractive else { return }
        let answer = state.rounds == 0 ? state.password : []
        state.rounds += 1
        keyboardInteractive = state
        for index in 0..<count {
            // libssh2 frees each text with free(): allocate with malloc.
            let text = malloc(max(answer.count, 1))!.assumingMemoryBound(to: CChar.self)
            answer.withUnsafeBytes { bytes in
                if let base = bytes.baseAddress { memcpy(text, base, answer.count) }
            }
            responses[index].text = text
            responses[index].length = UInt32(answer.count)
        }
    }
}

/// How a keyboard-interactive login ended.
public enum KeyboardInteractiveOutcome: Sendable, Equatable {
    case accepted
    /// The server asked for the password and refused it.
    case refused
    /// The server failed the method without asking anything (e.g. sshd without PAM).
    case notAsked
}

/// The password a keyboard-interactive login answers with, and how many rounds of prompts came.
struct KeyboardInteractiveState {
    var password: [UInt8]
    var rounds = 0
}

/// The libssh2 keyboard-interactive callback: finds the session through the abstract pointer.
private let keyboardInteractiveResponder: @convention(c) (
    UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, Int32, Int32,
    UnsafePointer<LIBSSH2_USERAUTH_KBDINT_PROMPT>?, UnsafeMutablePointer<LIBSSH2_USERAUTH_KBDINT_RESPONSE>?,
    UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Void = { _, _, _, _, count, _, responses, abstract in
    guard let responses, let pointer = abstract?.pointee else { return }
    let session = Unmanaged<SSHSession>.fromOpaque(pointer).takeUnretainedValue()
    session.answer(prompts: Int(count), responses: responses)
}
