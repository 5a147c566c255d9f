import Glibc
import TunnelConfig

/// How this machine reaches a session's server now: the outgoing interface, the source
/// address, the gateway, and whether the interface's link is up. A network change matters
/// to a session only if these changed (a container's veth or a VPN coming up elsewhere does
/// not).
struct RouteFacts: Equatable, Sendable {
    var interface: Int32
    var source: String?
    var gateway: String?
    var isLinkUp: Bool
}

/// What a session learns of its route after a network change.
enum RouteCheck: Equatable, Sendable {
    /// The route the kernel would use now.
    case route(RouteFacts)
    /// Not a TCP session (through a jump host, or a test's fake): nothing to compare.
    case unknown
    /// The session cannot work any more: its address is gone, or there is no route.
    case gone(String)

    /// Looks up the route of the connected TCP socket `fd` to its peer, with the kernel's
    /// own route lookup (rtnetlink RTM_GETROUTE, as `ip route get` does).
    static func of(socket fd: Int32) -> RouteCheck {
        guard let local = Socket.localEndpoint(of: fd), let peer = peerAddress(of: fd) else { return .unknown }
        if !Socket.localAddresses().contains(local.host) {
            return .gone("this machine no longer has the address \(local.host) the session used")
        }
        switch RouteLookup.route(to: peer) {
        case .success(let facts):
            return .route(facts)
        case .failure(let failure) where failure.code == ENETUNREACH || failure.code == EHOSTUNREACH:
            return .gone("no route to the server: the network is down")
        case .failure:
            return .unknown
        }
    }

    private static func peerAddress(of fd: Int32) -> sockaddr_storage? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard named == 0, storage.ss_family == sa_family_t(AF_INET) || storage.ss_family == sa_family_t(AF_INET6) else { return nil }
        return storage
    }
}

/// One rtnetlink route query: which interface, source and gateway the kernel picks for an
/// address now.
enum RouteLookup {
    private static let routeRequest: UInt16 = 26 // RTM_GETROUTE
    private static let routeReply: UInt16 = 24 // RTM_NEWROUTE
    private static let errorReply: UInt16 = 2 // NLMSG_ERROR
    private static let destination: UInt16 = 1, outputInterface: UInt16 = 4, gatewayAttribute: UInt16 = 5, preferredSource: UInt16 = 7

    /// The errno of a failed lookup (ENETUNREACH: no route).
    struct Failure: Error {
        var code: Int32
    }

    /// The route to `address`, or the errno the kernel answered.
    static func route(to address: sockaddr_storage) -> Result<RouteFacts, Failure> {
        var address = address
        let family = Int32(address.ss_family)
        let raw: [UInt8] = withUnsafeBytes(of: &address) { bytes in
            family == AF_INET6 ? Array(bytes[8..<24]) : Array(bytes[4..<8])
        }
        // An IPv4-mapped IPv6 peer is reached over IPv4.
        let isMapped = family == AF_INET6 && raw[0..<10].allSatisfy { $0 == 0 } && raw[10] == 0xFF && raw[11] == 0xFF
        let queryFamily = isMapped ? AF_INET : family
        let destinationBytes = isMapped ? Array(raw[12..<16]) : raw

        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) // NETLINK_ROUTE
        guard fd >= 0 else { return .failure(Failure(code: errno)) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        var request: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value) { request.append(contentsOf: $0) } }
        let attributeLength = 4 + destinationBytes.count
        append(UInt32(16 + 12 + attributeLength)) // nlmsghdr.nlmsg_len
        append(routeRequest)
        append(UInt16(1)) // NLM_F_REQUEST
        append(UInt32(1)) // sequence
        append(UInt32(0)) // port id: the kernel's
        request += [UInt8(queryFamily), UInt8(destinationBytes.count * 8), 0, 0, 0, 0, 0, 0] // rtmsg
        append(UInt32(0)) // rtm_flags
        append(UInt16(attributeLength))
        append(destination)
        request += destinationBytes
        guard send(fd, request, request.count, 0) == request.count else { return .failure(Failure(code: errno)) }

        var reply = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &reply, reply.count, 0)
        guard count >= 16 else { return .failure(Failure(code: count < 0 ? errno : EIO)) }
        let type = reply.load(UInt16.self, at: 4)
        if type == errorReply {
            let code = count >= 20 ? -reply.load(Int32.self, at: 16) : EIO
            return .failure(Failure(code: code == 0 ? EIO : code))
        }
        guard type == routeReply, count >= 28 else { return .failure(Failure(code: EIO)) }
        var facts = RouteFacts(interface: 0, source: nil, gateway: nil, isLinkUp: true)
        let length = min(count, Int(reply.load(UInt32.self, at: 0)))
        var offset = 28
        while offset + 4 <= length {
            let attributeSize = Int(reply.load(UInt16.self, at: offset))
            let attributeType = reply.load(UInt16.self, at: offset + 2)
            guard attributeSize >= 4, offset + attributeSize <= length else { break }
            let value = Array(reply[(offset + 4)..<(offset + attributeSize)])
            switch attributeType {
            case outputInterface where value.count >= 4:
                facts.interface = value.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
            case gatewayAttribute:
                facts.gateway = text(of: value, family: queryFamily)
            case preferredSource:
                facts.source = text(of: value, family: queryFamily)
            default:
                break
            }
            offset += (attributeSize + 3) & ~3
        }
        facts.isLinkUp = isLinkUp(interface: facts.interface)
        return .success(facts)
    }

    private static func text(of bytes: [UInt8], family: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let written = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return written == nil ? nil : String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether the interface's link is up, from /sys/class/net/NAME/operstate ("down" and
    /// "lowerlayerdown" are not; loopback says "unknown", which is up).
    static func isLinkUp(interface index: Int32) -> Bool {
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard index > 0, if_indextoname(UInt32(index), &name) != nil else { return true }
        let path = "/sys/class/net/\(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))/operstate"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var state = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &state, state.count)
        guard count > 0 else { return true }
        let word = String(decoding: state[0..<count], as: UTF8.self).trimmingWhitespace
        return word != "down" && word != "lowerlayerdown"
    }
}

private extension Array where Element == UInt8 {
    func load<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
    }
}
