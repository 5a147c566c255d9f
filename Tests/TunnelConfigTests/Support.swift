import Foundation
import XCTest
@testable import TunnelConfig

/// A temporary configuration directory with its own home, services and passwd files.
final class ConfigFixture {
    let root: String
    let home: String

    init() {
        root = NSTemporaryDirectory() + "tunneld-config-\(UUID().uuidString)"
        home = root + "/home"
        try! FileManager.default.createDirectory(atPath: home + "/.ssh", withIntermediateDirectories: true)
        write("etc/services", """
            smtp            25/tcp          mail
            http            80/tcp          www
            sip             5060/tcp
            ssh             22/tcp
            domain          53/udp
            """)
        write("etc/passwd", """
            root:x:0:0:root:/root:/bin/bash
            mailer:x:1001:1001::\(root)/mailer-home:/bin/sh
            """)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: root)
    }

    var environment: ConfigurationLoader.Environment {
        ConfigurationLoader.Environment(
            userName: "kiosk", homeDirectory: home, agentSocket: "/run/agent.sock",
            servicesFile: root + "/etc/services", passwordFile: root + "/etc/passwd")
    }

    /// Writes `text` to `relative` under the fixture root; returns the full path.
    @discardableResult
    func write(_ relative: String, _ text: String, mode: Int = 0o644) -> String {
        let path = root + "/" + relative
        try! FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        return path
    }

    /// Makes an ed25519 key with ssh-keygen at `relative`, mode 0600.
    @discardableResult
    func key(_ relative: String, type: String = "ed25519") -> String {
        let path = root + "/" + relative
        try! FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh-keygen")
        process.arguments = ["-q", "-t", type, "-N", "", "-f", path] + (type == "rsa" ? ["-b", "1024"] : [])
        try! process.run()
        process.waitUntilExit()
        return path
    }

    func load(_ relative: String = "conf") -> Configuration {
        ConfigurationLoader(environment: environment).load(path: root + "/" + relative)
    }

    /// Writes `text` as the file `conf` and loads it: the configuration, and its diagnostics
    /// as printed.
    func load(text: String) -> (Configuration, [String]) {
        write("conf", text)
        let configuration = load()
        return (configuration, messages(configuration))
    }

    /// The diagnostics as printed, with the fixture root shortened to `ROOT`.
    func messages(_ configuration: Configuration) -> [String] {
        configuration.diagnostics.map { $0.description.replacingOccurrences(of: root, with: "ROOT") }
    }
}

/// A minimal valid stanza body, for tests that vary one attribute.
let minimalBody = """
    port = 7777
    server = mail.example.org
    server_args = localhost 25
    """
