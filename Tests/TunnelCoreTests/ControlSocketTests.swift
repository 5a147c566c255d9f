import Foundation
import Glibc
import XCTest
@testable import TunnelCore

/// The control socket is never where another account could take its place (issue 12).
final class ControlSocketTests: XCTestCase {
    private var root: String!

    override func setUp() {
        root = NSTemporaryDirectory() + "control-\(getpid())-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o755)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: root)
    }

    func testAPrivateDirectoryIsMadeAndAccepted() throws {
        let directory = root + "/private"
        XCTAssertNoThrow(try ControlSocket.checkDirectory(directory))
        var info = stat()
        XCTAssertEqual(lstat(directory, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o755 & ~UInt32(umask(umask(0))), "made, not writable by others")
    }

    func testAWorldWritableDirectoryLikeTmpIsRefused() {
        XCTAssertThrowsError(try ControlSocket.checkDirectory("/tmp")) { error in
            XCTAssertTrue("\(error)".contains("writable by every account"), "\(error)")
        }
        let open = root + "/open"
        mkdir(open, 0o755)
        chmod(open, 0o777)
        XCTAssertThrowsError(try ControlSocket.checkDirectory(open))
    }

    func testASymlinkInPlaceOfTheDirectoryIsRefused() {
        let link = root + "/link"
        symlink(root, link)
        XCTAssertThrowsError(try ControlSocket.checkDirectory(link)) { error in
            XCTAssertTrue("\(error)".contains("not a directory"), "\(error)")
        }
    }

    func testTheDefaultOutsideARuntimeDirectoryIsAPrivateDirectory() {
        guard geteuid() != 0 else {
            XCTAssertEqual(ControlSocket.defaultPath(environment: [:]), "/run/tunneld/control.sock")
            return
        }
        XCTAssertEqual(ControlSocket.defaultPath(environment: [:]), "/tmp/tunneld-\(geteuid())/control.sock")
    }
}
