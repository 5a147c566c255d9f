import Foundation
import XCTest
@testable import TunnelConfig

/// Thousands of random and mutated configurations: each parses, or yields errors that all
/// carry a file and line; none crashes or hangs.
final class FuzzTests: XCTestCase {
    /// A small deterministic generator (SplitMix64), so a failure can be reproduced.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    private let seeds = [
        "service smtp\n{\n    port = 7777\n    server = mail@mail.example.org:22\n    server_args = localhost smtp\n    linger = 30\n}\n",
        "defaults { linger = 5 only_from = 127.0.0.1 }\nservice a { port = 1 server = h server_args = x 1 keepalive = 1 2 cps = 5 1 }\n",
        "service x { port=2 server=/usr/bin/ssh server_args = -p 22 -l u -o Port=2 -W t:1 host user = root socket_type = stream }",
        "include other\nincludedir dir\nservice y { bind = [::1] port = 3 server = [2001:db8::1]:22 server_args = carbon 6001 persistent = yes }",
    ]

    private let vocabulary = [
        "service", "defaults", "include", "includedir", "{", "}", "=", "+=", "-=", "#", "\n", " ", "port", "bind",
        "server", "server_args", "user", "identity", "linger", "keepalive", "cps", "only_from", "no_access", "UNLIMITED",
        "*", "::", "[", "]", ":", "@", "/usr/bin/ssh", "nc", "-W", "-o", "0", "65536", "-1", "1e9", "SHA256:", "\u{0}",
        "é", "\t", "\r", "\\", "\"", "'", "yes", "no", "localhost", "10.0.0.0/8", "::ffff:1.2.3.4", "|1|",
    ]

    func testRandomAndMutatedConfigsNeverCrashAndErrorsAreLocated() throws {
        let directory = NSTemporaryDirectory() + "fuzz-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let environment = ConfigurationLoader.Environment(userName: "u", homeDirectory: directory, agentSocket: nil)
        var random = Generator(state: 20261123)
        let started = Date()
        var parsedCleanly = 0
        let rounds = 3000
        for round in 0..<rounds {
            let text = round % 2 == 0 ? mutate(seeds[round % seeds.count], &random) : assemble(&random)
            // The parser alone, on text.
            let parsed = Parser.parse(text, file: "fuzz")
            for diagnostic in parsed.diagnostics {
                XCTAssertNotNil(diagnostic.location, "round \(round): \(diagnostic) has no place for:\n\(text)")
            }
            // The whole loader, on a file, every tenth round (it touches the disk).
            if round % 10 == 0 {
                let path = directory + "/conf"
                FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
                let configuration = ConfigurationLoader(environment: environment).load(path: path)
                if !configuration.hasErrors { parsedCleanly += 1 }
                for diagnostic in configuration.diagnostics where diagnostic.location == nil {
                    XCTFail("round \(round): \(diagnostic) has no place for:\n\(text)")
                }
                _ = CheckReport(configuration).render()
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 60, "\(rounds) configurations should take seconds, not minutes")
        XCTAssertGreaterThan(parsedCleanly, 0, "some mutations should still be valid")
    }

    func testTheFuzzCorpusReplaysThroughTheFuzzTargets() throws {
        // Tests/Fuzz holds the seed corpus of .ci/sanitizers fuzz, and any input that once failed.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz")
        var replayed = 0
        for (directory, target) in [("stanzas", FuzzTargets.stanzas), ("known_hosts", FuzzTargets.knownHosts), ("permits", FuzzTargets.permits)] {
            let folder = root.appendingPathComponent(directory)
            for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) {
                target([UInt8](try Data(contentsOf: folder.appendingPathComponent(name))))
                replayed += 1
            }
        }
        XCTAssertGreaterThanOrEqual(replayed, 9, "the corpus is where the test expects it")
    }

    private func mutate(_ seed: String, _ random: inout Generator) -> String {
        var characters = Array(seed)
        for _ in 0..<Int.random(in: 1...6, using: &random) {
            guard !characters.isEmpty else { break }
            let index = Int.random(in: 0..<characters.count, using: &random)
            switch Int.random(in: 0..<4, using: &random) {
            case 0: characters.remove(at: index)
            case 1: characters.insert(Character(Unicode.Scalar(UInt8.random(in: 1...126, using: &random))), at: index)
            case 2: characters.insert(contentsOf: vocabulary.randomElement(using: &random)!, at: index)
            default:
                let other = Int.random(in: 0..<characters.count, using: &random)
                characters.swapAt(index, other)
            }
        }
        return String(characters)
    }

    private func assemble(_ random: inout Generator) -> String {
        (0..<Int.random(in: 0...60, using: &random)).map { _ in vocabulary.randomElement(using: &random)! }.joined(separator: Bool.random(using: &random) ? " " : "")
    }
}
