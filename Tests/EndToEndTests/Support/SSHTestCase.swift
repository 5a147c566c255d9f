import XCTest

/// A test case with a fresh sshd and echo target for every test, torn down after it.
class SSHTestCase: XCTestCase {
    var sshd: SSHServer!
    var echo: EchoServer!

    override func setUpWithError() throws {
        sshd = try SSHServer()
        echo = try EchoServer()
    }

    override func tearDown() {
        sshd = nil
        echo = nil
    }
}
