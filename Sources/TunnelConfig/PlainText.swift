/// Trimming and padding of text, for requests and tables, without Foundation.
extension StringProtocol {
    /// The text without the spaces and tabs (Unicode horizontal whitespace, as Foundation's
    /// `CharacterSet.whitespaces`) at either end.
    public var trimmingWhitespace: String {
        let isBlank: (Character) -> Bool = { $0.isWhitespace && !$0.isNewline }
        guard let first = firstIndex(where: { !isBlank($0) }), let last = lastIndex(where: { !isBlank($0) }) else { return "" }
        return String(self[first...last])
    }

    /// The text followed by spaces up to `width` Characters (a table column); longer text as it is.
    public func padded(to width: Int) -> String {
        String(self) + String(repeating: " ", count: Swift.max(0, width - count))
    }
}
