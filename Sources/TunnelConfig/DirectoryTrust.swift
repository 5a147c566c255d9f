import Glibc

/// Whether a directory may hold a file that another account must not be able to replace
/// (known_hosts that tunneld writes, its control socket): the checks OpenSSH makes before
/// it trusts a path.
public enum DirectoryTrust {
    /// What is wrong with a directory.
    public enum Problem: Equatable, Sendable {
        case unreadable(errno: Int32)
        /// Not a directory (with `followingSymlinks: false`, also a symlink to one).
        case notADirectory
        case foreignOwner(uid: uid_t)
        /// Writable by accounts beyond its owner (the bits in `forbiddenBits`).
        case writableByOthers
    }

    /// The problem with `directory`, or nil when it is a directory owned by this account, root
    /// or `alsoTrusted`, without any of `forbiddenBits` (0o022: group and others may not
    /// write; 0o002: others may not).
    public static func problem(with directory: String, alsoTrusted: uid_t? = nil, forbiddenBits: mode_t, followingSymlinks: Bool) -> Problem? {
        var info = stat()
        let status = followingSymlinks ? stat(directory, &info) : lstat(directory, &info)
        guard status == 0 else { return .unreadable(errno: errno) }
        guard info.st_mode & S_IFMT == S_IFDIR else { return .notADirectory }
        guard info.st_uid == geteuid() || info.st_uid == 0 || info.st_uid == alsoTrusted else { return .foreignOwner(uid: info.st_uid) }
        guard info.st_mode & forbiddenBits == 0 else { return .writableByOthers }
        return nil
    }
}
