import FoundationEssentials
import Glibc

/// Private key and passphrase files, checked the way OpenSSH checks a private key: a regular
/// file that neither group nor others may read. The check runs when the configuration is
/// read and again each time the file is used, since a file can change in between.
public enum PrivateFile {
    /// nil when `path` is fit to hold a secret, else why not, naming `attribute` and the file
    /// and saying what to do. A missing file is a problem too.
    public static func problem(_ path: String, attribute: String) -> String? {
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
    public static func readSecret(_ path: String, attribute: String) throws -> String {
        if let problem = problem(path, attribute: attribute) { throw FileProblem(problem) }
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
        return text
    }
}
