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

    // MARK: links swapped in for the socket (issue 22)

    /// A root-only file that a link planted at the socket's path points to.
    private func secret() -> String {
        let path = root + "/secret"
        FileManager.default.createFile(atPath: path, contents: Data("root only".utf8), attributes: [.posixPermissions: 0o600])
        return path
    }

    func testTheSocketGetsItsModeAtBindAndItsGroupWithoutFollowingALink() throws {
        try XCTSkipIf(geteuid() != 0, "only root can give a file to another group")
        let directory = root + "/run"
        mkdir(directory, 0o755)
        let path = directory + "/control.sock"
        let fd = try ControlSocket.bindSocketFile(path, group: 65534, owner: nil, what: "control socket")
        defer { close(fd) }
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o660, "made 0660 by bind itself: no chmod by name afterwards")
        XCTAssertEqual(info.st_gid, 65534)

        // A link another account swaps in after bind: the group goes to the link, never its target.
        let target = secret()
        unlink(path)
        symlink(target, path)
        XCTAssertNil(ControlSocket.giveGroup(path, to: 65534))
        XCTAssertEqual(stat(target, &info), 0)
        XCTAssertEqual(info.st_gid, 0, "the link's target keeps its group")
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "and its mode")
    }

    func testALinkPlantedAtTheSocketPathIsReplacedNotFollowed() throws {
        let directory = root + "/run"
        mkdir(directory, 0o755)
        let path = directory + "/control.sock"
        let target = secret()
        symlink(target, path)
        let fd = try ControlSocket.bindSocketFile(path, group: nil, owner: nil, what: "control socket")
        defer { close(fd) }
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK, "a socket now, not the link")
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
        XCTAssertEqual(stat(target, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "the target is untouched")
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "root only")
    }
}
