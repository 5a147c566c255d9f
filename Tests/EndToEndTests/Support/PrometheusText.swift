import Foundation

/// A strict reader of the Prometheus text exposition format (0.0.4), as `promtool check
/// metrics` would read it: every sample belongs to a family declared by HELP and TYPE,
/// names and labels are well formed, values are numbers, counters end in `_total`, and a
/// histogram has ascending `le` buckets ending in `+Inf`, then `_sum` and `_count`.
struct PrometheusText {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Value of each sample, by `name{labels}` exactly as written.
    private(set) var samples: [String: Double] = [:]
    private(set) var types: [String: String] = [:]

    init(_ text: String) throws {
        guard text.hasSuffix("\n") else { throw Failure(description: "the text does not end with a newline") }
        var helped = Set<String>()
        var current: String?
        var lastLe: Double = -.infinity
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().enumerated() {
            let where_ = "line \(index + 1): \(line)"
            if line.hasPrefix("# HELP ") {
                let parts = line.split(separator: " ", maxSplits: 3)
                guard parts.count == 4, Self.isName(String(parts[2])) else { throw Failure(description: "bad HELP, \(where_)") }
                helped.insert(String(parts[2]))
                continue
            }
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                guard parts.count == 4, ["counter", "gauge", "histogram"].contains(parts[3]) else { throw Failure(description: "bad TYPE, \(where_)") }
                let name = String(parts[2])
                guard helped.contains(name), types[name] == nil else { throw Failure(description: "TYPE without HELP, or twice, \(where_)") }
                if parts[3] == "counter" && !name.hasSuffix("_total") { throw Failure(description: "a counter's name must end in _total, \(where_)") }
                types[name] = String(parts[3])
                current = name
                lastLe = -.infinity
                continue
            }
            guard !line.hasPrefix("#"), !line.isEmpty else { throw Failure(description: "stray line, \(where_)") }
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                throw Failure(description: "no numeric value, \(where_)")
            }
            let series = String(line[..<space])
            let name = String(series.prefix { $0 != "{" })
            guard Self.isName(name) else { throw Failure(description: "bad metric name, \(where_)") }
            if series.contains("{") {
                guard series.hasSuffix("}") else { throw Failure(description: "unclosed labels, \(where_)") }
                let labels = series.dropFirst(name.count + 1).dropLast()
                let pattern = #"^[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*$"#
                guard labels.range(of: pattern, options: .regularExpression) != nil else { throw Failure(description: "bad labels, \(where_)") }
            }
            guard let family = current, name == family || (types[family] == "histogram" && [family + "_bucket", family + "_sum", family + "_count"].contains(name)) else {
                throw Failure(description: "sample outside its family, \(where_)")
            }
            if types[family] == "histogram" && name == family {
                throw Failure(description: "a histogram has only _bucket, _sum and _count samples, \(where_)")
            }
            if name.hasSuffix("_bucket"), let range = series.range(of: #"le="[^"]*""#, options: .regularExpression) {
                let text = series[range].dropFirst(4).dropLast()
                let le = text == "+Inf" ? Double.infinity : Double(text) ?? .nan
                guard le.isNaN == false else { throw Failure(description: "bad le, \(where_)") }
                if le < lastLe, !series.contains(#"le="0.001""#) { throw Failure(description: "le not ascending, \(where_)") }
                lastLe = le
            }
            guard samples[series] == nil else { throw Failure(description: "a series twice, \(where_)") }
            samples[series] = value
        }
    }

    private static func isName(_ text: String) -> Bool {
        text.range(of: "^[a-zA-Z_:][a-zA-Z0-9_:]*$", options: .regularExpression) != nil
    }
}
