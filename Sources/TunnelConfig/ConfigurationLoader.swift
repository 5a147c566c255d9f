/// Reads a configuration path (a file or a directory) into a `Configuration`.
public struct ConfigurationLoader: Sendable {
    /// What the loader needs from the world outside the text: the account's home and name,
    /// the agent socket, and where /etc/services lives. Tests pass their own.
    public struct Environment: Sendable {
        public var userName: String
        public var homeDirectory: String
        public var agentSocket: String?
        public var servicesFile: String
        public init(userName: String, homeDirectory: String, agentSocket: String?, servicesFile: String = "/etc/services") {
            self.userName = userName
            self.homeDirectory = homeDirectory
            self.agentSocket = agentSocket
            self.servicesFile = servicesFile
        }
    }

    public var environment: Environment

    public init(environment: Environment) {
        self.environment = environment
    }

    /// Loads `path`. Never throws: every problem becomes a located diagnostic.
    public func load(path: String) -> Configuration {
        Configuration(diagnostics: [Diagnostic(.error, at: nil, "configuration loading is not written yet")])
    }
}

import Foundation

extension ConfigurationLoader.Environment {
    /// The environment of the account this process runs as.
    public static var current: Self {
        let env = ProcessInfo.processInfo.environment
        return Self(userName: env["USER"] ?? NSUserName(), homeDirectory: NSHomeDirectory(), agentSocket: env["SSH_AUTH_SOCK"])
    }
}
