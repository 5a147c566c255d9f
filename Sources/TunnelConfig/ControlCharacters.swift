/// Writing text from outside (file contents, peer names, server messages) where a control
/// character could end a line or drive a terminal: the log and `--check`'s report.
public enum ControlCharacters {
    /// `text` with every control character (and the Unicode line separators) written as an
    /// escape: `\n`, `\r`, `\t`, `\x1b`, `\u{2028}`; `extra` characters get a backslash too.
    public static func escaped(_ text: String, alsoEscaping extra: Set<Unicode.Scalar> = []) -> String {
        var result = ""
        result.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where extra.contains(scalar): result += "\\" + String(scalar)
            case _ where scalar.value < 0x100 && isControl(scalar):
                let hex = String(scalar.value, radix: 16)
                result += "\\x" + (hex.count == 1 ? "0" : "") + hex
            case _ where isControl(scalar):
                result += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    /// C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional
    /// embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), which can make a
    /// logged name read backwards ("Trojan Source").
    public static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
            || (0x202a...0x202e).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value)
    }
}
