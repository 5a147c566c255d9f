import Foundation
import Glibc
import XCTest

/// `password_file`: password and keyboard-interactive logins against a real sshd that checks
/// /etc/shadow, with a throwaway account (issue 14).
final class PasswordTests: XCTestCase {
    private var account: String!
    /// Holds the password files while tunneld reads them.
    private let secrets = ScratchDirectory("password")
    private let password = "Tunneld-pw-\(UInt32.random(in: 100_000...999_999))-ok"

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("password logins need a throwaway account, which only root can create (useradd, chpasswd)") }
        account = "tdpw\(UInt32.random(in: 10_000...99_999))"
        let added = try runProgram("/usr/sbin/useradd", ["--no-create-home", "--shell", "/bin/sh", account])
        guard added.status == 0 else { throw XCTSkip("useradd failed: \(added.error)") }
        let directory = ScratchDirectory("chpasswd")
        let input = directory.write("input", "\(account!):\(password)\n", mode: 0o600)
        let changed = try runProgram("/bin/sh", ["-c", "/usr/sbin/chpasswd < \(input)"])
        XCTAssertEqual(changed.status, 0, changed.error)
    }

    override func tearDown() {
        if let account { _ = try? runProgram("/usr/sbin/userdel", [account]) }
    }

    /// A service logging in as the test account with the password in a 0600 file holding `secret`.
    private func start(_ sshd: SSHServer, target: UInt16, secret: String, arguments: [String] = [], agent: String = "none") throws -> (TunneldProcess, UInt16, String) {
        let file = secrets.write("password", secret + "\n", mode: 0o600)
        let port = TCP.freePort()
        let tunneld = try TunneldProcess(stanzas: ["pw": """
            service pw
            {
                port            = \(port)
                server          = \(account!)@127.0.0.1:\(sshd.port)
                server_args     = 127.0.0.1 \(target)
                password_file   = \(file)
                identity_agent  = \(agent)
                known_hosts     = \(sshd.knownHosts)
                connect_timeout = 5
                linger          = 0
            }
            """], arguments: arguments)
        return (tunneld, port, file)
    }

    func testTheRightPasswordCarriesAConnectionAndIsNeverLogged() throws {
        let sshd = try SSHServer(passwordLogins: true)
        let echo = try EchoServer()
        let (tunneld, port, _) = try start(sshd, target: echo.port, secret: password, arguments: ["--debug"])
        XCTAssertEqual(try TCP.exchange(port: port, Array("by password".utf8)), Array("by password".utf8), tunneld.log + sshd.log)
        XCTAssertTrue(tunneld.waitForLog("result=ok", timeout: 5), tunneld.log)
        XCTAssertTrue(sshd.log.contains("Accepted password for \(account!)") || sshd.log.contains("Accepted keyboard-interactive"), sshd.log)
        XCTAssertEqual(sshd.failedPasswords(), 0, sshd.log)
        _ = tunneld.terminate()
        XCTAssertTrue(tunneld.log.contains("debug"), "the log ran at debug level")
        XCTAssertFalse(tunneld.log.contains(password), "the password is never logged")
    }

    func testAWrongPasswordIsOneFailedAttemptPerClientWithTheReason() throws {
        let sshd = try SSHServer(passwordLogins: true)
        let echo = try EchoServer()
        let wrong = "Not-the-password-4417"
        let (tunneld, port, file) = try start(sshd, target: echo.port, secret: wrong, arguments: ["--debug"])
        for client in 1...2 {
            let fd = try TCP.connect(port: port)
            XCTAssertEqual(try TCP.readAll(fd), [], "client \(client) is closed without data")
            close(fd)
            XCTAssertTrue(tunneld.waitForLog("connection closed", count: client, timeout: 10), tunneld.log)
            XCTAssertTrue(waitUntil(timeout: 5) { sshd.failedPasswords(for: account) == client }, sshd.log)
            // Backoff may hold the second client's connect; give a stray retry time to show.
            Thread.sleep(forTimeInterval: 1.5)
            XCTAssertEqual(sshd.failedPasswords(), client, "exactly one password attempt per client:\n\(sshd.log)")
        }
        let lines = tunneld.connectionLines(containing: "ssh-failed")
        XCTAssertEqual(lines.count, 2, tunneld.log)
        for line in lines {
            XCTAssertTrue(line.contains("127.0.0.1:\(sshd.port) refused the password of \(account!) in \(file); fix the password file"), line)
        }
        _ = tunneld.terminate()
        XCTAssertFalse(tunneld.log.contains(wrong), "the password is never logged")
    }

    func testKeyboardInteractiveAnswersThePromptOnceWithThePassword() throws {
        let sshd = try SSHServer(keyboardInteractiveByPAM: true)
        let echo = try EchoServer()
        let (tunneld, port, _) = try start(sshd, target: echo.port, secret: password)
        XCTAssertEqual(try TCP.exchange(port: port, Array("by prompt".utf8)), Array("by prompt".utf8), tunneld.log + sshd.log)
        XCTAssertTrue(sshd.log.contains("Accepted keyboard-interactive/pam for \(account!)"), sshd.log)
        _ = tunneld.terminate()

        let wrongSSHD = try SSHServer(keyboardInteractiveByPAM: true)
        let (wrong, wrongPort, file) = try start(wrongSSHD, target: echo.port, secret: "Not-the-password-2291")
        let fd = try TCP.connect(port: wrongPort)
        XCTAssertEqual(try TCP.readAll(fd), [], "the client is closed without data")
        close(fd)
        XCTAssertTrue(wrong.waitForLog("connection closed", timeout: 10), wrong.log)
        XCTAssertTrue(waitUntil(timeout: 5) { wrongSSHD.failedPasswords(method: "keyboard-interactive/pam") >= 1 }, wrongSSHD.log)
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertEqual(wrongSSHD.failedPasswords(method: "keyboard-interactive/pam"), 1, "one attempt:\n\(wrongSSHD.log)")
        XCTAssertEqual(wrongSSHD.failedPasswords(), 0, "no second try by password:\n\(wrongSSHD.log)")
        let lines = wrong.connectionLines(containing: "ssh-failed")
        XCTAssertEqual(lines.count, 1, wrong.log)
        XCTAssertTrue(lines.first?.contains("refused the password of \(account!) in \(file); fix the password file") == true, wrong.log)
    }

    func testPublicKeysInTheAgentComeBeforeThePassword() throws {
        // sshd's AuthorizedKeysFile is one file for every account: the test key logs in as the throwaway account too.
        let sshd = try SSHServer(passwordLogins: true)
        let echo = try EchoServer()
        let socket = secrets.file("agent.sock")
        let agent = try ChildProcess("/usr/bin/ssh-agent", ["-D", "-a", socket], output: secrets.file("agent.out"), error: secrets.file("agent.err"))
        defer { agent.signal(SIGTERM) }
        XCTAssertTrue(waitUntil(timeout: 5) { FileManager.default.fileExists(atPath: socket) })
        let added = try runProgram("/usr/bin/ssh-add", [sshd.userKey], environment: ["SSH_AUTH_SOCK": socket])
        XCTAssertEqual(added.status, 0, added.error)
        let (tunneld, port, _) = try start(sshd, target: echo.port, secret: "Not-the-password-8812", agent: socket)
        XCTAssertEqual(try TCP.exchange(port: port, Array("by agent".utf8)), Array("by agent".utf8), tunneld.log + sshd.log)
        XCTAssertTrue(sshd.log.contains("Accepted publickey for \(account!)"), sshd.log)
        XCTAssertEqual(sshd.failedPasswords(), 0, "the password is not tried once a key is accepted:\n\(sshd.log)")
    }
}
