import FoundationEssentials
import Glibc

/// Private key and passphrase files, checked the way OpenSSH checks a private key: a regular
/// file that neither group nor others may read. The check runs when the configuration is
/// read and again each time the file is used, since a file can change in between. Like a
/// configuration file, it and its directories must be trusted (`PathTrust`): owned by root
/// or by the account that reads it, and writable by no one else.
public enum PrivateFile {
    /// nil when `path` is fit to hold a secret, else why not, naming `attribute` and the file
    /// and saying what to do. A missing file is a problem too. `trust` says whose files are
    /// trusted: by default root's and this process's account's.
    public static func problem(_ path: String, attribute: String, trust: PathTrust = .current) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else {
            return "\(attribute) \(path) cannot be used: \(errorText())"
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            return "\(attribute) \(path) is not a regular file"
        }
        guard info.st_mode & 0o077 == 0 else {
            let why = attribute == "identity" ? "; OpenSSH refuses such keys too:" : ";"
            return "\(attribute) \(path) is readable by group or others\(why) chmod 600 \(path)"
        }
        if let problem = trust.problem(with: path) {
            return "\(attribute) \(problem)"
        }
        return nil
    }

    /// Marks of a private key file, any of which makes a file no password: a key must never
    /// be sent to a server as one.
    static let keyMarks = ["-----BEGIN", "openssh-key-v1", "b3BlbnNzaC1rZXktdjE", "PuTTY-User-Key-File", "PRIVATE KEY"]

    /// nil when `text` (a file's content without its line end) can be a password: one line that
    /// does not look like a private key; else why not, naming the file.
    public static func passwordProblem(_ text: String, path: String) -> String? {
        if keyMarks.contains(where: { text.contains($0) }) {
            return "password_file \(path) looks like a private key, not a password: refused; give a file that holds only the password, or use identity = \(path)"
        }
        if text.contains(where: \.isNewline) {
            return "password_file \(path) holds more than one line: refused; put only the password in it, on one line"
        }
        return nil
    }

    /// The passphrase an `identity_passphrase_file` holds: its text without the one line end
    /// (`\n` or `\r\n`) an editor puts after it. Throws `FileProblem` naming the file.
    public static func readPassphrase(_ path: String) throws -> String {
        try readSecret(path, attribute: "identity_passphrase_file")
    }

    /// The secret a file named by `attribute` (`identity_passphrase_file`, `password_file`)
    /// holds: its text without the one line end (`\n` or `\r\n`) an editor puts after it.
    /// Throws `FileProblem` naming the attribute and the file, never the secret.
    public static func readSecret(_ path: String, attribute: String, trust: PathTrust = .current) throws -> String {
        if let problem = problem(path, attribute: attribute, trust: trust) { throw FileProblem(problem) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FileProblem("\(attribute) \(path) cannot be read: \(errorText())")
        }
        // Bytes, not Characters: Swift reads "\r\n" as one Character that is neither "\r" nor "\n".
        var bytes = [UInt8](data)
        if bytes.last == UInt8(ascii: "\n") {
            bytes.removeLast()
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        }
        guard let text = String(bytes: bytes, encoding: .utf8) else {
            throw FileProblem("\(attribute) \(path) is not UTF-8 text")
        }
        if attribute == "password_file", let problem = passwordProblem(text, path: path) {
            throw FileProblem(problem)
        }
        return text
    }
}
