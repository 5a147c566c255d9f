/// `name OP value…` inside braces, as written.
struct Assignment: Equatable {
    var name: String
    var op: AssignmentOperator
    var values: [String]
    var line: Int
}

/// One top-level item of a configuration file.
enum Item: Equatable {
    case defaults(assignments: [Assignment], line: Int)
    case service(name: String, assignments: [Assignment], line: Int)
    case include(path: String, line: Int)
    case includeDirectory(path: String, line: Int)
}

/// Turns tokens into items: a pure function from text to values and located errors.
/// After an error it skips to the next place that makes sense, so one mistake gives one message.
struct Parser {
    private let tokens: [Token]
    private let file: String
    private var position = 0
    private(set) var diagnostics: [Diagnostic] = []
    /// Whether any top-level word was `service`, `defaults`, `include` or `includedir`.
    private var sawStanzaKeyword = false

    /// Parses `text` read from `file` (the name is used in messages only). A file with errors
    /// and not one `service`, `defaults`, `include` or `includedir` is not a configuration
    /// file (say, `include /etc/shadow`): one error says so, and none quotes its content.
    static func parse(_ text: String, file: String) -> (items: [Item], diagnostics: [Diagnostic]) {
        var parser = Parser(tokens: Lexer.tokenize(text, knownNames: AttributeTable.allNames), file: file)
        let items = parser.parseFile()
        if !parser.sawStanzaKeyword, let first = parser.tokens.first, !parser.diagnostics.isEmpty {
            let message = "\(file) is not a configuration file (it does not start with service, defaults, include or includedir); its content is not shown"
            return ([], [Diagnostic(.error, at: SourceLocation(file: file, line: first.line), message)])
        }
        return (items, parser.diagnostics)
    }

    private init(tokens: [Token], file: String) {
        self.tokens = tokens
        self.file = file
    }

    private mutating func error(_ line: Int, _ service: String?, _ message: String) {
        diagnostics.append(Diagnostic(.error, at: SourceLocation(file: file, line: line), service: service, message))
    }

    private var current: Token? { position < tokens.count ? tokens[position] : nil }

    private func peek(_ offset: Int) -> Token? {
        position + offset < tokens.count ? tokens[position + offset] : nil
    }

    private mutating func parseFile() -> [Item] {
        var items: [Item] = []
        while let token = current {
            guard case .word(let word) = token.kind else {
                error(token.line, nil, "unexpected '\(Self.describe(token))'; a stanza starts with service NAME, defaults, include or includedir")
                position += 1
                continue
            }
            if word.utf8.count >= Lexer.maximumWordLength {
                error(token.line, nil, "a word of \(Lexer.maximumWordLength) or more characters; is this a configuration file?")
            }
            if ["service", "defaults", "include", "includedir"].contains(word) { sawStanzaKeyword = true }
            switch word {
            case "service":
                position += 1
                guard let nameToken = current, case .word(let name) = nameToken.kind else {
                    error(token.line, nil, "service needs a name: service NAME { … }")
                    if current?.kind == .openBrace { skipPastStanza() }
                    continue
                }
                position += 1
                if let assignments = parseBody(service: name, headerLine: token.line) {
                    items.append(.service(name: name, assignments: assignments, line: token.line))
                }
            case "defaults":
                position += 1
                if let assignments = parseBody(service: nil, headerLine: token.line) {
                    items.append(.defaults(assignments: assignments, line: token.line))
                }
            case "include", "includedir":
                position += 1
                guard let pathToken = current, case .word(let path) = pathToken.kind else {
                    error(token.line, nil, "\(word) needs a path")
                    continue
                }
                position += 1
                items.append(word == "include" ? .include(path: path, line: token.line) : .includeDirectory(path: path, line: token.line))
            default:
                error(token.line, nil, "unexpected '\(word)' outside a stanza; a stanza starts with service NAME, defaults, include or includedir")
                skipLine(of: token)
            }
        }
        return items
    }

    /// Parses `{ name OP values… }`. Returns nil when the stanza is too broken to use.
    private mutating func parseBody(service: String?, headerLine: Int) -> [Assignment]? {
        let label = service.map { "service \($0)" } ?? "defaults"
        guard let open = current, open.kind == .openBrace else {
            let line = current?.line ?? headerLine
            error(line, service, "expected { after \(label)")
            skipPastStanza()
            return nil
        }
        position += 1
        var assignments: [Assignment] = []
        var isBroken = false
        while true {
            guard let token = current else {
                error(headerLine, service, "\(label) has no closing }; add } after its last attribute")
                return nil
            }
            switch token.kind {
            case .closeBrace:
                position += 1
                return isBroken ? nil : assignments
            case .openBrace:
                error(token.line, service, "unexpected { inside \(label); is a } missing before it?")
                position += 1
                isBroken = true
            case .assign(let op):
                error(token.line, service, "'\(op.rawValue)' without an attribute name before it")
                position += 1
                isBroken = true
            case .word(let name):
                guard let next = peek(1), case .assign(let op) = next.kind else {
                    error(token.line, service, "expected '=' after '\(name)': write \(name) = VALUE")
                    position += 1
                    skipToNextAssignment()
                    isBroken = true
                    continue
                }
                position += 2
                var values: [String] = []
                while let valueToken = current, case .word(let value) = valueToken.kind {
                    if let after = peek(1), case .assign = after.kind { break }
                    values.append(value)
                    position += 1
                }
                assignments.append(Assignment(name: name.lowercased(), op: op, values: values, line: token.line))
            }
        }
    }

    private mutating func skipToNextAssignment() {
        while let token = current {
            if token.kind == .closeBrace { return }
            if case .word = token.kind, let next = peek(1), case .assign = next.kind { return }
            position += 1
        }
    }

    private mutating func skipPastStanza() {
        while let token = current {
            position += 1
            if token.kind == .closeBrace { return }
        }
    }

    private mutating func skipLine(of token: Token) {
        position += 1
        while let next = current, next.line == token.line { position += 1 }
    }

    private static func describe(_ token: Token) -> String {
        switch token.kind {
        case .word(let word): return word
        case .openBrace: return "{"
        case .closeBrace: return "}"
        case .assign(let op): return op.rawValue
        }
    }
}
