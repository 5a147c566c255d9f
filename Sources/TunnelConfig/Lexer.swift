/// One word or symbol of a configuration file, with the line it is on.
struct Token: Equatable {
    enum Kind: Equatable {
        case word(String)
        case openBrace
        case closeBrace
        case assign(AssignmentOperator)
    }

    var kind: Kind
    var line: Int
    /// Whether the token is the first on its line (a glued `name=value` splits only there).
    var startsLine: Bool
}

/// `=`, `+=` or `-=`.
enum AssignmentOperator: String, Equatable {
    case set = "="
    case add = "+="
    case remove = "-="
}

/// Splits configuration text into tokens. Newlines only separate words; `#` starts a comment
/// at the start of a line or after whitespace; `{`, `}` and a lone operator are tokens of their
/// own; `name=value` written without spaces at the start of a line is split too.
enum Lexer {
    /// Longest word accepted; longer ones are cut and reported by the parser.
    static let maximumWordLength = 4096

    static func tokenize(_ text: String, knownNames: Set<String>) -> [Token] {
        var tokens: [Token] = []
        var line = 1
        var word = ""
        var wordLine = 1
        var atLineStart = true
        var wordStartsLine = true
        var inComment = false
        var previousWasSpace = true

        func flush() {
            guard !word.isEmpty else { return }
            tokens.append(contentsOf: split(word, line: wordLine, startsLine: wordStartsLine, knownNames: knownNames))
            word = ""
        }

        for character in text {
            if character == "\n" || character == "\r\n" {
                flush()
                inComment = false
                line += 1
                atLineStart = true
                previousWasSpace = true
                continue
            }
            if inComment { continue }
            if character == "#" && previousWasSpace {
                flush()
                inComment = true
                continue
            }
            if character == " " || character == "\t" || character == "\r" || character == "\u{0B}" || character == "\u{0C}" {
                flush()
                previousWasSpace = true
                continue
            }
            previousWasSpace = false
            if character == "{" || character == "}" {
                flush()
                tokens.append(Token(kind: character == "{" ? .openBrace : .closeBrace, line: line, startsLine: atLineStart))
                atLineStart = false
                continue
            }
            if word.isEmpty {
                wordLine = line
                wordStartsLine = atLineStart
                atLineStart = false
            }
            if word.utf8.count < maximumWordLength { word.append(character) }
        }
        flush()
        return tokens
    }

    /// A word is an operator, a glued `name=value` at the start of a line, or a plain word.
    private static func split(_ word: String, line: Int, startsLine: Bool, knownNames: Set<String>) -> [Token] {
        if let op = AssignmentOperator(rawValue: word) {
            return [Token(kind: .assign(op), line: line, startsLine: startsLine)]
        }
        if startsLine, let equals = word.firstIndex(of: "=") {
            var name = String(word[..<equals])
            var op = AssignmentOperator.set
            if name.hasSuffix("+") { name.removeLast(); op = .add }
            else if name.hasSuffix("-") { name.removeLast(); op = .remove }
            if knownNames.contains(name.lowercased()) {
                var result = [
                    Token(kind: .word(name), line: line, startsLine: true),
                    Token(kind: .assign(op), line: line, startsLine: false),
                ]
                let value = String(word[word.index(after: equals)...])
                if !value.isEmpty { result.append(Token(kind: .word(value), line: line, startsLine: false)) }
                return result
            }
        }
        return [Token(kind: .word(word), line: line, startsLine: startsLine)]
    }
}
