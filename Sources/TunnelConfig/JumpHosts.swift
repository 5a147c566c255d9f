/// How ssh names jump hosts: ProxyJump's `[user@]host[:port][,…]` lists, and the one
/// ProxyCommand form that means a jump host, `ssh -W %h:%p HOST`.
enum JumpHosts {
    /// A ProxyJump value as its hops, first hop first; `none` is no hops.
    static func list(_ text: String) -> [String] {
        let hops = text.split(separator: ",").map { $0.trimmingWhitespace }.filter { !$0.isEmpty }
        return hops.count == 1 && hops[0].lowercased() == "none" ? [] : hops
    }

    /// The jump host of a ProxyCommand that is `ssh [-q -T …] [-l USER] [-p PORT] -W %h:%p
    /// HOST` in any order (`[%h]:%p` too), as `[user@]host[:port]`; nil for any other command.
    static func host(inProxyCommand command: String) -> String? {
        let words = command.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let program = words.first, program == "ssh" || program.hasSuffix("/ssh") else { return nil }
        var host: String?
        var user: String?
        var port: String?
        var forwardsToTarget = false
        var index = 1
        while index < words.count {
            let word = words[index]
            index += 1
            guard word.hasPrefix("-"), word.count > 1 else {
                guard host == nil else { return nil }
                host = word
                continue
            }
            let option = word.dropFirst()
            if option.allSatisfy({ "qTNnxaCk46v".contains($0) }) { continue }
            guard option.count == 1 || "Wlp".contains(option.first!) else { return nil }
            let letter = option.first!
            var value = String(option.dropFirst())
            if value.isEmpty {
                guard index < words.count else { return nil }
                value = words[index]
                index += 1
            }
            switch letter {
            case "W": forwardsToTarget = value == "%h:%p" || value == "[%h]:%p"
            case "l": user = value
            case "p": port = value
            default: return nil
            }
        }
        guard forwardsToTarget, var hop = host, !hop.contains("%") else { return nil }
        if let port { hop = (hop.contains(":") ? "[\(hop)]" : hop) + ":\(port)" }
        if let user, !hop.contains("@") { hop = "\(user)@\(hop)" }
        return hop
    }
}
