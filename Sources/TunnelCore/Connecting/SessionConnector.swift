import FoundationEssentials
import Glibc
import Logging
import Platform
import SSHTransport
import TunnelConfig

/// Why a session could not be set up, as one sentence for the log and for waiting clients.
struct ConnectFailure: Error, CustomStringConvertible {
    var description: String
    /// This machine ran out of something (descriptors, memory): not the server's fault, so
    /// it must not make the server back off.
    var isLocalShortage = false
}

/// Sets up one SSH session for a session key: TCP connect (or a link through the jump host),
/// handshake, host-key check and authentication, all within the connect timeout. Runs on the
/// session's own thread.
struct SessionConnector {
    let key: SessionKey
    let connectTimeout: Double
    let logger: Logger
    /// The pool whose sessions to the jump host carry this one, for a route with jump hosts.
    var jumpPool: SessionPool?

    /// Returns an authenticated session, or throws `ConnectFailure` saying what went wrong.
    func connect() throws -> SSHSession {
        let deadline = ContinuousClock.now + .milliseconds(Int(connectTimeout * 1000))
        do {
            let session: SSHSession
            if let pinned = key.fingerprint {
                session = try handshakeWithPinnedKey(pinned, by: deadline)
            } else {
                let known = KnownHosts.load(paths: key.knownHosts, hasher: HostNameHash.hmacSHA1).keys(forHost: key.server.host, port: key.server.port)
                session = try handshake(preferring: Self.supportedAlgorithms(in: known.filter { !$0.isRevoked }.map(\.keyType)), by: deadline)
                try verifyHostKey(try session.hostKey(), known: known)
            }
            try authenticate(session, by: deadline)
            return session
        } catch let failure as ConnectFailure {
            throw failure
        } catch {
            throw ConnectFailure(description: "\(error)")
        }
    }

    /// TCP connect and SSH handshake, offering `algorithms` for the host key (libssh2's own
    /// preference when empty).
    private func handshake(preferring algorithms: [String], by deadline: ContinuousClock.Instant) throws -> SSHSession {
        let (fd, link) = try openConnection(by: deadline)
        let session = try SSHSession(socket: fd)
        session.preferHostKeyAlgorithms(algorithms)
        do {
            try session.complete("the SSH handshake with \(key.server)", by: deadline) { try session.handshake() }
        } catch {
            // Through a jump host, the jump host's own failure is the one to report.
            if let reason = link?.failure() { throw ConnectFailure(description: reason) }
            throw error
        }
        return session
    }

    /// A TCP connection to the server, or a link to it through the last jump host.
    private func openConnection(by deadline: ContinuousClock.Instant) throws -> (Int32, JumpLink?) {
        if let jumpRoute = key.jumpRoute {
            guard let jumpPool else { throw ConnectFailure(description: "no session pool to reach the jump host \(jumpRoute.login) with") }
            let link = try JumpLink.open(to: key.server, through: jumpRoute, pool: jumpPool)
            return (link.socket, link)
        }
        do {
            let (fd, address) = try ConnectionRacer(server: key.server, addressFamily: key.addressFamily).connect(by: deadline)
            logger.debug("connected", metadata: ["ssh.host": "\(key.server)", "ssh.address": "\(address)"])
            return (fd, nil)
        } catch .noConnection(let failure) {
            throw ConnectFailure(description: failure.sentence(host: key.server.host, server: "\(key.server)"))
        } catch .localShortage(let error) {
            throw ConnectFailure(description: "cannot connect to \(key.server): \(error)", isLocalShortage: true)
        }
    }

    /// A session whose host key has the pinned fingerprint. A server with several host keys
    /// shows one per handshake (the type libssh2 prefers), and libssh2 cannot ask again on
    /// the same connection; so when the first key is not the pinned one, each other type is
    /// asked for on a fresh connection, within the same deadline. The type that matched is
    /// asked for first next time, so a reconnect takes one handshake.
    private func handshakeWithPinnedKey(_ pinned: String, by deadline: ContinuousClock.Instant) throws -> SSHSession {
        let wanted = Self.normalizedFingerprint(pinned)
        let remembered = Self.pinnedKeyTypes.type(for: key)
        var seen: [HostKey] = []
        var tried: Set<String> = []
        var lastError: Error?
        for algorithm in (remembered.map { [$0] } ?? []) + [nil] + Self.allAlgorithms {
            if let algorithm {
                guard !tried.contains(algorithm), !seen.contains(where: { $0.algorithm == algorithm }) else { continue }
                tried.insert(algorithm)
            }
            guard ContinuousClock.now < deadline else { break }
            let session: SSHSession
            do {
                session = try handshake(preferring: algorithm.map { [$0] } ?? [], by: deadline)
            } catch let failure as ConnectFailure {
                throw failure
            } catch {
                // With libssh2's own choice this is any failed handshake; asking for one type,
                // it mostly means the server has no key of that type.
                if algorithm == nil { throw error }
                lastError = error
                continue
            }
            let hostKey = try session.hostKey()
            if hostKey.fingerprint == wanted {
                Self.pinnedKeyTypes.remember(hostKey.algorithm, for: key)
                return session
            }
            session.disconnect(reason: "host key is not the pinned one")
            seen.append(hostKey)
        }
        if seen.isEmpty, let lastError { throw lastError }
        let keys = seen.map { "\($0.algorithm) \($0.fingerprint)" }.joined(separator: ", ")
        throw ConnectFailure(description: "host key of \(key.server) is \(keys), not the pinned fingerprint \(pinned); if the server's key really changed, update fingerprint")
    }

    /// The host key type that last matched each pinned fingerprint.
    private static let pinnedKeyTypes = PinnedKeyTypes()

    /// Every host key algorithm libssh2 1.10 can verify, most preferred first.
    static let allAlgorithms = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"]

    /// The host key algorithms libssh2 1.10 can verify, in the order known_hosts lists them.
    static func supportedAlgorithms(in keyTypes: [String]) -> [String] {
        let supported = Set(allAlgorithms)
        var seen = Set<String>()
        return keyTypes.filter { supported.contains($0) && seen.insert($0).inserted }
    }

    // MARK: Host key

    private func verifyHostKey(_ hostKey: HostKey, known: [KnownHostKey]) throws {
        let fingerprint = hostKey.fingerprint
        let line = KnownHosts.entryLine(host: key.server.host, port: key.server.port, keyType: hostKey.algorithm, key: hostKey.blob)
        switch KnownHosts.verdict(keyType: hostKey.algorithm, key: hostKey.blob, known: known) {
        case .known:
            return
        case .revoked(let location):
            throw ConnectFailure(description: "host key of \(key.server) (\(hostKey.algorithm) \(fingerprint)) is marked @revoked at \(location)")
        case .changed(let location):
            throw ConnectFailure(description: "HOST KEY CHANGED for \(key.server): server sent \(hostKey.algorithm) \(fingerprint) but \(location) holds another key; if the change is expected, replace that line with: \(line)")
        case .unknown:
            break
        }
        switch key.hostKeyPolicy {
        case .strict:
            let file = key.knownHosts.first ?? "~/.ssh/known_hosts"
            throw ConnectFailure(description: "unknown host key for \(key.server): \(hostKey.algorithm) \(fingerprint); after checking the fingerprint, add this line to \(file): \(line)")
        case .acceptNew:
            guard let file = key.knownHosts.first else {
                throw ConnectFailure(description: "unknown host key for \(key.server) and no known_hosts file to pin it in")
            }
            do {
                try KnownHosts.append(line: line, to: file)
            } catch {
                throw ConnectFailure(description: "cannot pin the host key of \(key.server): \(error)")
            }
            logger.notice("pinned new host key", metadata: [
                "ssh.host": "\(key.server)", "host_key.fingerprint": "\(fingerprint)", "known_hosts": "\(file)",
            ])
        }
    }

    /// `SHA256:abc=` and `SHA256:abc` mean the same key.
    static func normalizedFingerprint(_ text: String) -> String {
        var value = text.trimmingWhitespace
        while value.hasSuffix("=") { value.removeLast() }
        return value
    }

    // MARK: Authentication

    /// Logs in with the methods the server offers, in OpenSSH's order: public keys (agent,
    /// then key files), then, with a password file, keyboard-interactive or password. The
    /// password is offered at most once per connect, so a wrong one is one failed attempt.
    private func authenticate(_ session: SSHSession, by deadline: ContinuousClock.Instant) throws {
        let methods = Set(try session.complete("authentication with \(key.server)", by: deadline) {
            try session.authenticationMethods(user: key.user)
        })
        if session.isAuthenticated { return }
        var tried: [String] = []
        var problems: [String] = []
        var unusable: [String] = []
        if methods.contains("publickey") {
            if try authenticateWithKeys(session, tried: &tried, problems: &problems, unusable: &unusable, by: deadline) { return }
        }
        if let passwordFile = key.passwordFile {
            try authenticateWithPassword(session, file: passwordFile, offered: methods, by: deadline)
            return
        }
        if !methods.contains("publickey") {
            throw ConnectFailure(description: "\(key.server) does not take public keys for \(key.user) (it offers \(methods.sorted().joined(separator: ", "))); set password_file, or enable PubkeyAuthentication on the server")
        }
        if tried.isEmpty && !unusable.isEmpty {
            throw ConnectFailure(description: "no usable key to log in to \(key.server) with: " + unusable.joined(separator: "; "))
        }
        if tried.isEmpty {
            throw ConnectFailure(description: "no key to log in to \(key.server) with: no ssh-agent and none of \(key.identities.joined(separator: ", ")) exists; set identity")
        }
        var sentence = "\(key.server) refused every key for \(key.user) (tried \(tried.joined(separator: ", ")))"
        if !(problems + unusable).isEmpty { sentence += ": " + (problems + unusable).joined(separator: "; ") }
        throw ConnectFailure(description: sentence + "; add the public key to \(key.user)'s authorized_keys on the server")
    }

    /// Tries the agent, then each key file. Returns whether one was accepted; notes what was
    /// tried and what went wrong.
    private func authenticateWithKeys(_ session: SSHSession, tried: inout [String], problems: inout [String], unusable: inout [String], by deadline: ContinuousClock.Instant) throws -> Bool {
        if let agent = key.identityAgent, FileManager.default.fileExists(atPath: agent) {
            tried.append("agent")
            do {
                if try session.authenticateWithAgent(user: key.user, socketPath: agent, by: deadline) { return true }
            } catch {
                problems.append("\(error)")
            }
        }
        for identity in key.identities where FileManager.default.fileExists(atPath: identity) {
            // Checked again here: the file may have changed since the configuration was read.
            if let problem = PrivateFile.problem(identity, attribute: "identity") {
                unusable.append(problem)
                continue
            }
            tried.append(identity)
            let passphrase: String?
            do {
                passphrase = try key.identityPassphraseFile.map(PrivateFile.readPassphrase)
            } catch {
                throw ConnectFailure(description: "cannot log in to \(key.server) with \(identity): \(error)")
            }
            do {
                try session.complete("authentication with \(identity)", by: deadline) {
                    try session.authenticate(user: key.user, privateKeyFile: identity, passphrase: passphrase)
                }
                return true
            } catch let error as SSHError {
                if session.isPeerClosed { throw ConnectFailure(description: "\(key.server) closed the connection during authentication") }
                problems.append("\(identity): \(error.message)")
            }
        }
        return false
    }

    /// Logs in with the password in `file`: keyboard-interactive when offered (as OpenSSH
    /// prefers), else password. A refused password throws at once, without another try.
    private func authenticateWithPassword(_ session: SSHSession, file: String, offered methods: Set<String>, by deadline: ContinuousClock.Instant) throws {
        let refused = ConnectFailure(description: "\(key.server) refused the password of \(key.user) in \(file); fix the password file")
        let password: String
        do {
            password = try PrivateFile.readSecret(file, attribute: "password_file")
        } catch {
            throw ConnectFailure(description: "cannot log in to \(key.server) as \(key.user): \(error)")
        }
        if methods.contains("keyboard-interactive") {
            let outcome = try session.complete("keyboard-interactive authentication with \(key.server)", by: deadline) {
                try session.authenticateInteractively(user: key.user, password: password)
            }
            switch outcome {
            case .accepted: return
            case .refused: throw refused
            case .notAsked: break
            }
        }
        if methods.contains("password") {
            let accepted = try session.complete("password authentication with \(key.server)", by: deadline) {
                try session.authenticate(user: key.user, password: password)
            }
            if accepted { return }
            throw refused
        }
        throw ConnectFailure(description: "\(key.server) takes no password for \(key.user) (it offers \(methods.sorted().joined(separator: ", "))); enable PasswordAuthentication on the server, or log in with a key")
    }
}

/// Which host key type matched a session key's pinned fingerprint last time; shared by the
/// session threads.
private final class PinnedKeyTypes: @unchecked Sendable {
    private let lock = Lock()
    private var types: [SessionKey: String] = [:]

    func type(for key: SessionKey) -> String? {
        lock.lock()
        defer { lock.unlock() }
        return types[key]
    }

    func remember(_ type: String, for key: SessionKey) {
        lock.lock()
        types[key] = type
        lock.unlock()
    }
}
