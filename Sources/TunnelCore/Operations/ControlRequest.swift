/// What a client of the control socket may ask, parsed from its one line.
enum ControlRequest: Equatable {
    /// How `status` answers.
    enum StatusFormat: Equatable {
        case table
        case json
        case prometheus
    }

    case status(StatusFormat)
    /// `reconnect [SERVICE…]`: these services' sessions (all if none) are suspect.
    case reconnect([String])

    /// The request in `line`, or nil if it is none of the above.
    init?(parsing line: String) {
        let words = line.split(separator: " ").map(String.init)
        switch words.first {
        case "status" where words.count == 1: self = .status(.table)
        case "status" where words == ["status", "json"]: self = .status(.json)
        case "status" where words == ["status", "prometheus"]: self = .status(.prometheus)
        case "reconnect": self = .reconnect(Array(words.dropFirst()))
        default: return nil
        }
    }

    /// The answer to a line that is no request.
    static func unknown(_ line: String) -> String {
        "unknown request '\(line)'; try status, status json, status prometheus or reconnect [SERVICE...]\n"
    }
}
