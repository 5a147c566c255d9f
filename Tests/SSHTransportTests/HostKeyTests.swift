import Foundation
import XCTest
@testable import SSHTransport

final class HostKeyTests: XCTestCase {
    /// The fingerprint must be the one `ssh-keygen -lf` prints, since users compare the two.
    func testFingerprintMatchesSSHKeygen() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hostkey-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let keyPath = directory.appendingPathComponent("key").path
        XCTAssertEqual(try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", keyPath]).status, 0)

        let publicLine = try String(contentsOfFile: keyPath + ".pub", encoding: .utf8).split(separator: " ")
        let blob = try XCTUnwrap(Data(base64Encoded: String(publicLine[1])))
        let key = HostKey(algorithm: String(publicLine[0]), blob: [UInt8](blob))

        let printed = try run("/usr/bin/ssh-keygen", ["-l", "-E", "sha256", "-f", keyPath + ".pub"]).output
        let expected = String(printed.split(separator: " ")[1])
        XCTAssertEqual(key.fingerprint, expected)
        XCTAssertEqual(key.base64, String(publicLine[1]))
    }

    func testSHA256KnownVectors() {
        func hex(_ text: String) -> String {
            var digest = SHA256()
            digest.update(Array(text.utf8))
            return digest.finalize().map { String(format: "%02x", $0) }.joined()
        }
        XCTAssertEqual(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(
            hex(String(repeating: "a", count: 1000)),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    func testOpenFailureReasonKeepsTheServersWords() {
        XCTAssertEqual(SSHSession.openFailureReason("Channel open failure (administratively prohibited)"), "administratively prohibited")
        XCTAssertEqual(SSHSession.openFailureReason("Channel open failure (connect failed)"), "connect failed")
        XCTAssertEqual(SSHSession.openFailureReason("would block"), "would block")
    }

    private func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
