import Glibc

/// Whether a file that tunneld reads (configuration, key, passphrase, password) can be trusted,
/// as sshd's StrictModes decides it: the file and every directory above it must belong to root
/// or to the account that reads them, and no group or other account may write them, or another
/// account could put its own text, or a link to a secret, in its place.
///
/// A directory that only its owner could otherwise protect is accepted when root owns it and
/// its sticky bit is set (`/tmp`): others may add names there but not replace root's.
public struct PathTrust: Sendable, Equatable {
    /// Accounts whose files are trusted besides root: the account tunneld runs as, and with
    /// `run_as` the account that reads keys after the switch.
    public var owners: Set<uid_t>

    /// Trusts root and `owners`.
    public init(owners: Set<uid_t>) {
        self.owners = owners.union([0])
    }

    /// Trusts root and the account this process runs as: as root, root alone.
    public static var current: PathTrust { PathTrust(owners: [geteuid()]) }

    /// Group and others may not write a trusted file or directory.
    static let forbiddenBits: mode_t = 0o022

    /// nil when `path`, and every directory above it once links are resolved, can be trusted;
    /// else one sentence `ITEM: owned by alice: refused; …` or `ITEM: writable by others:
    /// refused; …` naming the first item at fault and the fix. A path that does not exist
    /// is no trust problem: whoever reads it reports that.
    public func problem(with path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        let canonical = String(cString: resolved)
        free(resolved)
        var item = canonical
        while true {
            if let problem = problem(item: item, holding: item == canonical ? nil : path) { return problem }
            if item == "/" { return nil }
            item = PathText.parent(of: item)
        }
    }

    private func problem(item: String, holding path: String?) -> String? {
        var info = stat()
        guard lstat(item, &info) == 0 else { return nil }
        return problem(info, item: item, holding: path)
    }

    private func problem(_ info: stat, item: String, holding path: String?) -> String? {
        let held = path.map { " (it holds \($0))" } ?? ""
        guard owners.contains(info.st_uid) else {
            let fix = owners == [0] ? "chown root \(item)" : "chown it to root or to \(PathTrust.accountName(of: owners.subtracting([0]).min() ?? 0))"
            return "\(item): owned by \(PathTrust.accountName(of: info.st_uid)): refused\(held); \(fix)"
        }
        let writable = info.st_mode & PathTrust.forbiddenBits
        let isStickyRootDirectory = info.st_mode & S_IFMT == S_IFDIR && info.st_mode & S_ISVTX != 0 && info.st_uid == 0
        guard writable == 0 || isStickyRootDirectory else {
            let who = writable == PathTrust.forbiddenBits ? "group and others" : writable & 0o020 != 0 ? "group" : "others"
            return "\(item): writable by \(who): refused\(held); chmod go-w \(item)"
        }
        return nil
    }

    /// The login name of `uid`, or `uid N` when it has none.
    static func accountName(of uid: uid_t) -> String {
        getpwuid(uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(uid)"
    }
}
