import Foundation
import Glibc

/// Two network namespaces made for one test, a server's and a laptop's, joined by a veth pair
/// on the documentation network 198.51.100.0/24. Both ends of the link are inside the
/// namespaces (the pair is created there, never in the root namespace), so nothing the test
/// sends can leave the machine. `remove()` kills what still runs inside them and deletes them.
final class NetworkNamespaces {
    static let serverAddress = "198.51.100.1"
    static let laptopAddress = "198.51.100.2"
    /// The laptop's address on "the next network" after it roams.
    static let roamedAddress = "198.51.100.3"
    static let prefixLength = 24
    /// Every namespace these tests make is named `tdl-srv-PID-N` or `tdl-lap-PID-N`.
    static let namePrefixes = ["tdl-srv-", "tdl-lap-"]
    static let serverLink = "veth-srv"
    static let laptopLink = "veth-lap"

    let server: String
    let laptop: String
    /// The laptop's current address.
    private(set) var laptopAddress = NetworkNamespaces.laptopAddress
    private var isRemoved = false
    private nonisolated(unsafe) static var made = 0

    /// The `ip` program, or nil if there is none.
    static let ip: String? = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip", "/usr/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Why these tests cannot run here (not root, no `ip`, `ip netns` refused), or nil.
    static let unavailableReason: String? = {
        guard geteuid() == 0 else {
            return "roaming tests need root to make network namespaces with `ip netns`; run swift test as root to include them"
        }
        guard let ip else { return "roaming tests need iproute2's `ip` (not found in /usr/sbin, /sbin, /bin, /usr/bin)" }
        let probe = "tdl-lap-\(getpid())-probe"
        guard let added = try? runProgram(ip, ["netns", "add", probe]), added.status == 0 else {
            return "roaming tests need `ip netns add` to work; it failed here (no CAP_SYS_ADMIN or no netns support?)"
        }
        _ = try? runProgram(ip, ["netns", "delete", probe])
        return nil
    }()

    /// Makes the namespaces, the veth pair, the addresses, and brings every link up.
    init() throws {
        Self.removeStale()
        Self.made += 1
        server = "tdl-srv-\(getpid())-\(Self.made)"
        laptop = "tdl-lap-\(getpid())-\(Self.made)"
        do {
            try Self.ip(["netns", "add", server])
            try Self.ip(["netns", "add", laptop])
            try Self.ip(["link", "add", Self.serverLink, "netns", server, "type", "veth",
                         "peer", "name", Self.laptopLink, "netns", laptop])
            for namespace in [server, laptop] {
                try Self.ip(["-n", namespace, "link", "set", "dev", "lo", "up"])
            }
            try Self.ip(["-n", server, "address", "add", "\(Self.serverAddress)/\(Self.prefixLength)", "dev", Self.serverLink])
            try Self.ip(["-n", laptop, "address", "add", "\(laptopAddress)/\(Self.prefixLength)", "dev", Self.laptopLink])
            try Self.ip(["-n", server, "link", "set", "dev", Self.serverLink, "up"])
            try Self.ip(["-n", laptop, "link", "set", "dev", Self.laptopLink, "up"])
        } catch {
            remove()
            throw error
        }
    }

    deinit {
        remove()
    }

    /// The program prefix that runs a command inside `namespace`.
    func exec(in namespace: String) -> [String] {
        [Self.ip ?? "ip", "netns", "exec", namespace]
    }

    /// The laptop "joins another network": its old address goes, `address` comes, with the
    /// subnet route that goes with it.
    func moveLaptop(to address: String) throws {
        try Self.ip(["-n", laptop, "address", "delete", "\(laptopAddress)/\(Self.prefixLength)", "dev", Self.laptopLink])
        laptopAddress = address
        try Self.ip(["-n", laptop, "address", "add", "\(address)/\(Self.prefixLength)", "dev", Self.laptopLink])
        try ensureLaptopRoute()
    }

    /// Takes the laptop's link down (its route to the server goes with it) or brings it back
    /// up with its address and route.
    func setLaptopLink(up: Bool) throws {
        try Self.ip(["-n", laptop, "link", "set", "dev", Self.laptopLink, up ? "up" : "down"])
        guard up else { return }
        let addresses = try Self.ip(["-n", laptop, "-4", "-o", "address", "show", "dev", Self.laptopLink])
        if !addresses.contains(laptopAddress + "/") {
            try Self.ip(["-n", laptop, "address", "add", "\(laptopAddress)/\(Self.prefixLength)", "dev", Self.laptopLink])
        }
        try ensureLaptopRoute()
    }

    /// The laptop's route to the server's subnet, added if the kernel has not (yet) put it back.
    private func ensureLaptopRoute() throws {
        let subnet = "198.51.100.0/\(Self.prefixLength)"
        let routes = try Self.ip(["-n", laptop, "-4", "route", "show", subnet])
        if !routes.contains(subnet) {
            try Self.ip(["-n", laptop, "route", "replace", subnet, "dev", Self.laptopLink, "src", laptopAddress])
        }
    }

    /// The first line the server's `port` sends to a TCP client on the laptop (sshd's
    /// `SSH-2.0-…` version line), or an explanation of why none came within 3 s. Tests use it
    /// to show that the network itself works when tunneld does not.
    func laptopGreeting(fromServerPort port: UInt16) -> String {
        let script = "exec 3<>/dev/tcp/\(Self.serverAddress)/\(port) && head -n 1 <&3"
        let command = exec(in: laptop) + ["/usr/bin/timeout", "3", "/bin/bash", "-c", script]
        guard let result = try? runProgram(command[0], Array(command.dropFirst()), timeout: 10) else { return "(could not run bash)" }
        return result.status == 0 ? result.output.trimmed : "(no greeting, status \(result.status): \(result.error.trimmed))"
    }

    /// What the laptop's link, addresses and routes look like now, for failure messages.
    var laptopState: String {
        let link = (try? Self.ip(["-n", laptop, "-br", "link", "show", "dev", Self.laptopLink])) ?? "?"
        let addresses = (try? Self.ip(["-n", laptop, "-br", "-4", "address", "show", "dev", Self.laptopLink])) ?? "?"
        let routes = (try? Self.ip(["-n", laptop, "-4", "route", "show"])) ?? "?"
        return "link: \(link.trimmed); addresses: \(addresses.trimmed); routes: \(routes.trimmed.replacingOccurrences(of: "\n", with: " | "))"
    }

    /// Kills whatever still runs in the namespaces (processes this test started, by id) and
    /// deletes them; the veth pair goes with them. Safe to call twice.
    func remove() {
        guard !isRemoved else { return }
        isRemoved = true
        Self.delete(server)
        Self.delete(laptop)
    }

    /// Deletes namespaces with this suite's prefixes that a test process which no longer runs
    /// left behind (a crash, a kill -9). Namespaces of a live process are someone's running test.
    static func removeStale() {
        guard let ip, let listing = try? runProgram(ip, ["netns", "list"]) else { return }
        for line in listing.output.split(separator: "\n") {
            let name = String(line.split(separator: " ")[0])
            guard let prefix = namePrefixes.first(where: { name.hasPrefix($0) }) else { continue }
            let owner = name.dropFirst(prefix.count).split(separator: "-").first.flatMap { pid_t($0) }
            if let owner, owner != getpid(), kill(owner, 0) == 0 || errno == EPERM { continue }
            delete(name)
        }
    }

    private static func delete(_ namespace: String) {
        guard let ip else { return }
        // A namespace lives on while a process is inside it: end those first (they are the
        // servers and the tunneld this test started there), then delete the name.
        _ = waitUntil(timeout: 5, interval: 0.05) {
            let pids = (try? runProgram(ip, ["netns", "pids", namespace]))?.output.split(separator: "\n").compactMap { pid_t($0) } ?? []
            for pid in pids { kill(pid, SIGKILL) }
            return pids.isEmpty
        }
        _ = try? runProgram(ip, ["netns", "delete", namespace])
    }

    /// Runs `ip ARGUMENTS`; throws with its error output if it fails.
    @discardableResult
    private static func ip(_ arguments: [String]) throws -> String {
        guard let ip else { throw TCP.Failure(description: "no ip program") }
        let result = try runProgram(ip, arguments, timeout: 10)
        guard result.status == 0 else {
            throw TCP.Failure(description: "ip \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.error.trimmed)")
        }
        return result.output
    }
}

extension String {
    fileprivate var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
