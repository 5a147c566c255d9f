import Glibc

/// Dropping root for good once the sockets are bound (`run_as` in defaults).
enum Privileges {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The uid and gid of `account`.
    static func ids(of account: String) throws -> (uid: uid_t, gid: gid_t) {
        guard let entry = getpwnam(account) else {
            throw Failure(description: "run_as \(account): no such account; create it (adduser --system --group \(account)) or fix the name")
        }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }

    /// Becomes `account`: its groups, gid and uid. Afterwards root cannot be regained, which
    /// is checked. Throws when not root or when any step fails.
    static func drop(to account: String) throws {
        let (uid, gid) = try ids(of: account)
        guard geteuid() == 0 else {
            throw Failure(description: "run_as \(account) needs tunneld to start as root; it runs as uid \(geteuid())")
        }
        guard initgroups(account, gid) == 0 else { throw Failure(description: "initgroups(\(account)): \(String(cString: strerror(errno)))") }
        guard setgid(gid) == 0 else { throw Failure(description: "setgid(\(gid)): \(String(cString: strerror(errno)))") }
        guard setuid(uid) == 0 else { throw Failure(description: "setuid(\(uid)): \(String(cString: strerror(errno)))") }
        if uid != 0 && (setuid(0) == 0 || seteuid(0) == 0) {
            throw Failure(description: "could regain root after switching to \(account); refusing to run")
        }
        // Nothing tunneld runs afterwards (ssh -G on a reload) gains privileges through a
        // set-user-ID file or file capabilities, with or without systemd's NoNewPrivileges.
        guard setNoNewPrivileges() == 0 else {
            throw Failure(description: "prctl(PR_SET_NO_NEW_PRIVS): \(String(cString: strerror(errno)))")
        }
    }

    /// `prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)`: 0, or -1 with errno. prctl is variadic, so
    /// Swift does not import it; on Linux (x86_64 and arm64 alike) a variadic function takes
    /// integer arguments as a fixed one does, so it is called through that type.
    static func setNoNewPrivileges() -> Int32 {
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        let setNoNewPrivs: Int32 = 38 // PR_SET_NO_NEW_PRIVS, <linux/prctl.h>
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else {
            errno = ENOSYS
            return -1
        }
        return unsafeBitCast(symbol, to: Prctl.self)(setNoNewPrivs, 1, 0, 0, 0)
    }
}
