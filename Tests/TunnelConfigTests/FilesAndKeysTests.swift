import Foundation
import SSHTransport
import XCTest
@testable import TunnelConfig

/// Identity files, passphrase files and known_hosts, checked the way OpenSSH would.
final class FilesAndKeysTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    private func load(_ extra: String) -> (Service?, [String]) {
        fixture.write("conf/s", "service s\n{\n\(minimalBody)\n\(extra)\n}\n")
        let configuration = fixture.load()
        return (configuration.services.first, fixture.messages(configuration))
    }

    func testAnIdentityIsUsedAsGivenAndRelativePathsFollowTheFile() throws {
        let key = fixture.key("conf/keys/kiosk")
        XCTAssertEqual(load("identity = \(key)").0?.identities, [key])
        XCTAssertEqual(load("identity = keys/kiosk").0?.identities, [key])
        fixture.key("home/.ssh/mine")
        XCTAssertEqual(load("identity = ~/.ssh/mine").0?.identities, [fixture.home + "/.ssh/mine"])
    }

    func testAMissingIdentityIsAnError() {
        XCTAssertEqual(load("identity = /nonexistent/key").1, ["ROOT/conf/s:6: error: s: identity /nonexistent/key does not exist; create a key with ssh-keygen -t ed25519 -f /nonexistent/key, or fix the path"])
    }

    func testAnIdentityReadableByOthersIsRefusedLikeOpenSSHDoes() {
        let key = fixture.key("k")
        chmod(key, 0o644)
        XCTAssertEqual(load("identity = \(key)").1.first, "ROOT/conf/s:6: error: s: identity ROOT/k is readable by group or others; OpenSSH refuses such keys too: chmod 600 ROOT/k")
    }

    func testAnRSAKeyIsRefusedWithTheReason() {
        let key = fixture.key("rsa", type: "rsa")
        XCTAssertEqual(load("identity = \(key)").1.first, "ROOT/conf/s:6: error: s: identity ROOT/rsa is an RSA key: libssh2 1.10 signs only with ssh-rsa (SHA-1), which OpenSSH 8.8 and later refuse; make an ed25519 key with ssh-keygen -t ed25519")
        let text = try! String(contentsOfFile: key, encoding: .utf8)
        let crlf = fixture.write("rsa-crlf", text.replacingOccurrences(of: "\n", with: "\r\n"), mode: 0o600)
        XCTAssertEqual(load("identity = \(crlf)").1.first, "ROOT/conf/s:6: error: s: identity ROOT/rsa-crlf is an RSA key: libssh2 1.10 signs only with ssh-rsa (SHA-1), which OpenSSH 8.8 and later refuse; make an ed25519 key with ssh-keygen -t ed25519", "a key saved with CRLF line ends too")
        let ecdsa = fixture.key("ecdsa", type: "ecdsa")
        XCTAssertNotNil(load("identity = \(ecdsa)").0)
    }

    func testPassphraseFileMustBePrivate() {
        let secret = fixture.write("secret", "hunter2\n", mode: 0o640)
        XCTAssertEqual(load("identity_passphrase_file = \(secret)").1.first, "ROOT/conf/s:6: error: s: identity_passphrase_file ROOT/secret is readable by group or others; chmod 600 ROOT/secret")
        chmod(secret, 0o600)
        XCTAssertEqual(load("identity_passphrase_file = \(secret)").0?.identityPassphraseFile, secret)
    }

    func testKnownHostsWithoutTheServersKeyIsAWarningWithTheFix() {
        let file = fixture.write("known_hosts", "other.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWs=\n")
        let (loaded, messages) = load("known_hosts = \(file)")
        XCTAssertNotNil(loaded)
        XCTAssertEqual(messages, ["ROOT/conf/s:6: warning: s: known_hosts holds no key for mail.example.org:22; after checking the key, run: ssh-keyscan mail.example.org >> ROOT/known_hosts"])
        fixture.write("known_hosts", "mail.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWs=\n")
        XCTAssertEqual(load("known_hosts = \(file)").1, [])
        XCTAssertEqual(load("known_hosts = /nonexistent").1, ["ROOT/conf/s:6: warning: s: no known_hosts file (/nonexistent) exists, so the server's host key will be refused; after checking the key, run: ssh-keyscan mail.example.org >> /nonexistent"])
        XCTAssertEqual(load("known_hosts = /nonexistent\nhost_key = accept-new").1, [], "accept-new pins the first key it sees")
    }
}

final class KnownHostsTests: XCTestCase {
    private let blob = "AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWs="

    func testPlainPortAndPatternEntries() {
        let entries = KnownHosts(entries: KnownHosts.parse("""
            # comment
            bastion.example.org,192.0.2.1 ssh-ed25519 \(blob)
            [bastion.example.org]:2222 ecdsa-sha2-nistp256 \(blob)
            *.corp.example.org,!secret.corp.example.org ssh-ed25519 \(blob)
            @revoked old.example.org ssh-ed25519 \(blob)
            @cert-authority *.example.org ssh-ed25519 \(blob)
            garbage line
            """, file: "kh"))
        XCTAssertEqual(entries.keys(forHost: "bastion.example.org", port: 22).map(\.keyType), ["ssh-ed25519"])
        XCTAssertEqual(entries.keys(forHost: "BASTION.example.org", port: 22).count, 1)
        XCTAssertEqual(entries.keys(forHost: "192.0.2.1", port: 22).count, 1)
        XCTAssertEqual(entries.keys(forHost: "bastion.example.org", port: 2222).map(\.keyType), ["ecdsa-sha2-nistp256"])
        XCTAssertEqual(entries.keys(forHost: "a.corp.example.org", port: 22).count, 1)
        XCTAssertEqual(entries.keys(forHost: "secret.corp.example.org", port: 22).count, 0)
        XCTAssertEqual(entries.keys(forHost: "old.example.org", port: 22).map(\.isRevoked), [true])
        XCTAssertEqual(entries.keys(forHost: "bastion.example.org", port: 22).first?.location, SourceLocation(file: "kh", line: 2))
        XCTAssertEqual(entries.keys(forHost: "x.example.org", port: 22).count, 0, "@cert-authority lines are not host keys")
    }

    func testHashedEntriesAsSSHKeygenWritesThem() throws {
        let directory = NSTemporaryDirectory() + "kh-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/known_hosts"
        try "[127.0.0.1]:2222 ssh-ed25519 \(blob)\nbastion.example.org ssh-ed25519 \(blob)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh-keygen")
        process.arguments = ["-q", "-H", "-f", path]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("|1|"), text)

        let hosts = KnownHosts.load(paths: [path, directory + "/missing"], hasher: HostNameHash.hmacSHA1)
        XCTAssertEqual(KnownHosts.load(paths: [path], hasher: nil).keys(forHost: "bastion.example.org", port: 22).count, 0, "no hasher, no hashed match")
        XCTAssertEqual(hosts.keys(forHost: "127.0.0.1", port: 2222).count, 1)
        XCTAssertEqual(hosts.keys(forHost: "bastion.example.org", port: 22).count, 1)
        XCTAssertEqual(hosts.keys(forHost: "127.0.0.1", port: 22).count, 0, "[host]:port entries are not plain host entries")
    }

    func testTheLineToAddIsWhatSSHKeyscanPrints() {
        XCTAssertEqual(KnownHosts.entryLine(host: "127.0.0.1", port: 2222, keyType: "ssh-ed25519", key: [1, 2, 3]), "[127.0.0.1]:2222 ssh-ed25519 AQID")
        XCTAssertEqual(KnownHosts.entryLine(host: "Bastion", port: 22, keyType: "ssh-ed25519", key: [1, 2, 3]), "bastion ssh-ed25519 AQID")
    }

    func testCRLFFilesMatch() {
        let hosts = KnownHosts(entries: KnownHosts.parse("# written on Windows\r\nbastion.example.org ssh-ed25519 \(blob)\r\n[bastion.example.org]:2222 ssh-ed25519 \(blob)\r\n", file: "kh"))
        XCTAssertEqual(hosts.keys(forHost: "bastion.example.org", port: 22).map(\.location), [SourceLocation(file: "kh", line: 2)])
        XCTAssertEqual(hosts.keys(forHost: "bastion.example.org", port: 2222).map(\.location), [SourceLocation(file: "kh", line: 3)])
    }

    func testRevokedWinsWhereverItIs() {
        let hosts = KnownHosts(entries: KnownHosts.parse("""
            bastion.example.org ssh-ed25519 \(blob)
            @cert-authority bastion.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNhY2FjYWNhY2FjYWNhY2FjYWNhY2FjYWNhY2FjYWM=
            @revoked * ssh-ed25519 \(blob)
            """, file: "kh"))
        let known = hosts.keys(forHost: "bastion.example.org", port: 22)
        XCTAssertEqual(known.count, 2, "@cert-authority lines are not host keys")
        let key = [UInt8](Data(base64Encoded: blob)!)
        XCTAssertEqual(KnownHosts.verdict(keyType: "ssh-ed25519", key: key, known: known), .revoked(SourceLocation(file: "kh", line: 3)))
        let ca = [UInt8](Data(base64Encoded: "AAAAC3NzaC1lZDI1NTE5AAAAIGNhY2FjYWNhY2FjYWNhY2FjYWNhY2FjYWNhY2FjYWM=")!)
        XCTAssertEqual(KnownHosts.verdict(keyType: "ssh-ed25519", key: ca, known: known), .changed(SourceLocation(file: "kh", line: 1)), "a CA key is not the host's key")
        XCTAssertEqual(KnownHosts.verdict(keyType: "ssh-ed25519", key: key, known: Array(known.prefix(1))), .known(SourceLocation(file: "kh", line: 1)))
        XCTAssertEqual(KnownHosts.verdict(keyType: "ssh-ed25519", key: key, known: []), .unknown)
    }

    func testHMACSHA1KnownVector() {
        // RFC 2202 test case 2, through libcrypto.
        let mac = HostNameHash.hmacSHA1(salt: Array("Jefe".utf8), name: Array("what do ya want for nothing?".utf8))
        XCTAssertEqual(mac.map { String(format: "%02x", $0) }.joined(), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
    }
}

final class PrivateFileTests: XCTestCase {
    private var fixture: ConfigFixture!

    override func setUp() {
        fixture = ConfigFixture()
    }

    func testAPassphraseFileLosesExactlyOneLineEnd() throws {
        let cases = ["secret": "secret", "secret\n": "secret", "secret\r\n": "secret", "secret\n\n": "secret\n", "secret\r\r\n": "secret\r", " secret \n": " secret "]
        for (content, passphrase) in cases {
            let path = fixture.write("pass", content, mode: 0o600)
            XCTAssertEqual(try PrivateFile.readPassphrase(path), passphrase, content.debugDescription)
        }
    }

    func testAPassphraseFileReadableByOthersIsRefusedByName() {
        let path = fixture.write("pass", "secret\n", mode: 0o640)
        XCTAssertThrowsError(try PrivateFile.readPassphrase(path)) { error in
            XCTAssertEqual("\(error)", "identity_passphrase_file \(path) is readable by group or others; chmod 600 \(path)")
        }
        XCTAssertThrowsError(try PrivateFile.readPassphrase(fixture.root + "/missing")) { error in
            XCTAssertEqual("\(error)", "identity_passphrase_file \(fixture.root)/missing cannot be used: No such file or directory")
        }
    }
}
