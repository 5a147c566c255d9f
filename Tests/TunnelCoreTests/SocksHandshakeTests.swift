import XCTest
@testable import TunnelCore
import TunnelConfig

/// The SOCKS5 handshake byte for byte: what a client sends, what tunneld answers, what it
/// connects to, and what it refuses and why.
final class SocksHandshakeTests: XCTestCase {
    typealias Step = SocksHandshake.Step
    typealias Target = SocksHandshake.Target

    /// `05 01 00`: SOCKS5, one method, no authentication.
    let greeting: [UInt8] = [5, 1, 0]
    /// CONNECT 192.0.2.1:80.
    let ipv4Request: [UInt8] = [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]
    /// CONNECT [2001:db8::1]:443.
    let ipv6Request: [UInt8] = [5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb]
    /// CONNECT example.org:443.
    let domainRequest: [UInt8] = [5, 1, 0, 3, 11] + Array("example.org".utf8) + [0x01, 0xbb]

    let ipv4Target = Target(address: .ipv4([192, 0, 2, 1]), port: 80)
    let ipv6Target = Target(address: .ipv6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), port: 443)
    let domainTarget = Target(address: .domain("example.org"), port: 443)

    /// The steps of a handshake fed `bytes` one read per byte.
    func stepsFeedingOneByteAtATime(_ bytes: [UInt8]) -> [Step] {
        var handshake = SocksHandshake()
        return bytes.map { handshake.feed([$0]) }
    }

    /// The step of a fresh handshake fed `bytes` in one read.
    func stepFeedingAtOnce(_ bytes: [UInt8]) -> Step {
        var handshake = SocksHandshake()
        return handshake.feed(bytes)
    }

    /// The step after the greeting was answered, for `request` in one read.
    func stepForRequest(_ request: [UInt8]) -> Step {
        var handshake = SocksHandshake()
        XCTAssertEqual(handshake.feed(greeting), .send([5, 0]))
        return handshake.feed(request)
    }

    /// The steps of a greeting and a request fed byte by byte: the method-selection reply
    /// right after the greeting's last byte, the connect right after the request's last.
    func expectedByteByByteSteps(request: [UInt8], target: Target) -> [Step] {
        [.needMore, .needMore, .send([5, 0])]
            + Array(repeating: .needMore, count: request.count - 1)
            + [.connect(target: target, send: [], leftover: [])]
    }

    // MARK: Complete requests

    func testAnIPv4ConnectInOneRead() {
        XCTAssertEqual(stepFeedingAtOnce(greeting + ipv4Request),
                       .connect(target: ipv4Target, send: [5, 0], leftover: []),
                       "the method-selection reply is owed with the connect")
        XCTAssertEqual(ipv4Target.host, "192.0.2.1")
        XCTAssertEqual(ipv4Target.description, "192.0.2.1:80")
    }

    func testAnIPv4ConnectOneByteAtATime() {
        XCTAssertEqual(stepsFeedingOneByteAtATime(greeting + ipv4Request),
                       expectedByteByByteSteps(request: ipv4Request, target: ipv4Target))
    }

    func testAnIPv6ConnectInOneRead() {
        XCTAssertEqual(stepFeedingAtOnce(greeting + ipv6Request),
                       .connect(target: ipv6Target, send: [5, 0], leftover: []))
        XCTAssertEqual(ipv6Target.host, "2001:db8::1")
        XCTAssertEqual(ipv6Target.description, "[2001:db8::1]:443")
    }

    func testAnIPv6ConnectOneByteAtATime() {
        XCTAssertEqual(stepsFeedingOneByteAtATime(greeting + ipv6Request),
                       expectedByteByByteSteps(request: ipv6Request, target: ipv6Target))
    }

    func testADomainConnectInOneRead() {
        XCTAssertEqual(stepFeedingAtOnce(greeting + domainRequest),
                       .connect(target: domainTarget, send: [5, 0], leftover: []))
        XCTAssertEqual(domainTarget.host, "example.org")
        XCTAssertEqual(domainTarget.description, "example.org:443")
    }

    func testADomainConnectOneByteAtATime() {
        XCTAssertEqual(stepsFeedingOneByteAtATime(greeting + domainRequest),
                       expectedByteByByteSteps(request: domainRequest, target: domainTarget))
    }

    func testAClientThatWaitsForEachAnswerGetsTheMethodReplyOnce() {
        XCTAssertEqual(stepForRequest(domainRequest), .connect(target: domainTarget, send: [], leftover: []),
                       "the method-selection reply was already sent after the greeting")
    }

    func testAGreetingOfferingSeveralMethodsIsAcceptedWhenNoAuthenticationIsAmongThem() {
        XCTAssertEqual(stepFeedingAtOnce([5, 3, 2, 1, 0]), .send([5, 0]))
    }

    func testIPv6AddressesAreWrittenInCanonicalForm() {
        func host(_ bytes: [UInt8]) -> String { Target(address: .ipv6(bytes), port: 1).host }
        XCTAssertEqual(host(Array(repeating: 0, count: 15) + [1]), "::1")
        XCTAssertEqual(host([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6]), "2001:db8:1:2:3:4:5:6")
        XCTAssertEqual(host([0xfe, 0x80] + Array(repeating: 0, count: 12) + [0xab, 0xcd]), "fe80::abcd")
        XCTAssertEqual(host(Array(repeating: 0, count: 10) + [0xff, 0xff, 192, 0, 2, 1]), "::ffff:192.0.2.1")
    }

    func testADomainWithAColonIsBracketedInTheDescriptionOnly() {
        let target = Target(address: .domain("::1"), port: 22)
        XCTAssertEqual(target.host, "::1")
        XCTAssertEqual(target.description, "[::1]:22")
    }

    // MARK: Pipelined data

    func testDataSentRightAfterTheRequestIsLeftOver() {
        let data = Array("GET / HTTP/1.1\r\n".utf8)
        XCTAssertEqual(stepForRequest(domainRequest + data),
                       .connect(target: domainTarget, send: [], leftover: data))
    }

    func testGreetingRequestAndDataInOneRead() {
        let data: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 5, 1, 0]
        XCTAssertEqual(stepFeedingAtOnce(greeting + ipv6Request + data),
                       .connect(target: ipv6Target, send: [5, 0], leftover: data),
                       "data that looks like SOCKS is still data")
    }

    func testLeftoverComesFromASliceWithNonZeroIndices() {
        let read = [UInt8](repeating: 0xee, count: 5) + greeting + ipv4Request + [42]
        var handshake = SocksHandshake()
        XCTAssertEqual(handshake.feed(read[5...]), .connect(target: ipv4Target, send: [5, 0], leftover: [42]))
    }

    // MARK: Short input

    func testShortInputNeedsMore() {
        XCTAssertEqual(stepFeedingAtOnce([]), .needMore)
        XCTAssertEqual(stepFeedingAtOnce([5]), .needMore)
        XCTAssertEqual(stepFeedingAtOnce([5, 2, 0]), .needMore, "a second method is announced")
        XCTAssertEqual(stepForRequest(Array(ipv4Request.dropLast())), .needMore)
        XCTAssertEqual(stepForRequest([5, 1, 0, 3]), .needMore, "the domain length has not arrived")
        XCTAssertEqual(stepForRequest(Array(domainRequest.prefix(10))), .needMore)
    }

    func testARequestSplitAcrossReadsConnectsOnItsLastByte() {
        var handshake = SocksHandshake()
        XCTAssertEqual(handshake.feed(greeting + ipv6Request.prefix(7)), .send([5, 0]))
        XCTAssertEqual(handshake.feed(ipv6Request[7..<21]), .needMore)
        XCTAssertEqual(handshake.feed(ipv6Request[21...] + [9, 9]), .connect(target: ipv6Target, send: [], leftover: [9, 9]))
    }

    // MARK: Greeting refusals

    func testSOCKS4IsRefusedWithoutAReplyAtItsFirstByte() {
        let socks4Connect: [UInt8] = [4, 1, 0, 80, 192, 0, 2, 1, 0]
        XCTAssertEqual(stepFeedingAtOnce(socks4Connect),
                       .refuse(reply: [], reason: "SOCKS version 4 is not supported; use SOCKS5"))
        XCTAssertEqual(stepsFeedingOneByteAtATime([4]).first,
                       .refuse(reply: [], reason: "SOCKS version 4 is not supported; use SOCKS5"))
    }

    func testAnHTTPRequestOnTheSOCKSPortIsRefusedWithoutAReply() {
        XCTAssertEqual(stepFeedingAtOnce(Array("GET / HTTP/1.1\r\n".utf8)),
                       .refuse(reply: [], reason: "the client does not speak SOCKS5 (its first byte is 71); use SOCKS5"))
    }

    func testNoAcceptableMethodIsAnsweredWith05FF() {
        let reason = "the client offers no method tunneld supports (no authentication)"
        XCTAssertEqual(stepFeedingAtOnce([5, 1, 2]), .refuse(reply: [5, 0xff], reason: reason), "username/password only")
        XCTAssertEqual(stepFeedingAtOnce([5, 2, 1, 2]), .refuse(reply: [5, 0xff], reason: reason))
        XCTAssertEqual(stepFeedingAtOnce([5, 0]), .refuse(reply: [5, 0xff], reason: reason), "no methods at all")
        XCTAssertEqual(stepFeedingAtOnce([5, 0] + ipv4Request), .refuse(reply: [5, 0xff], reason: reason),
                       "decided before the request is looked at")
    }

    // MARK: Request refusals

    func testAWrongVersionInTheRequestIsAGeneralFailure() {
        XCTAssertEqual(stepForRequest([4, 1, 0, 1, 192, 0, 2, 1, 0, 80]),
                       .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the request has SOCKS version 4, not 5"))
    }

    func testBindAndUDPAssociateAreCommandsNotSupported() {
        XCTAssertEqual(stepForRequest([5, 2, 0, 1, 192, 0, 2, 1, 0, 80]),
                       .refuse(reply: [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the client asks for BIND; tunneld supports only CONNECT"))
        XCTAssertEqual(stepForRequest([5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
                       .refuse(reply: [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the client asks for UDP ASSOCIATE; tunneld supports only CONNECT"))
        XCTAssertEqual(stepForRequest([5, 9]),
                       .refuse(reply: [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the client asks for command 9; tunneld supports only CONNECT"),
                       "refused as soon as the command byte arrives")
    }

    func testARefusalInTheGreetingsReadCarriesTheOwedMethodReply() {
        XCTAssertEqual(stepFeedingAtOnce(greeting + [5, 2, 0, 1, 192, 0, 2, 1, 0, 80]),
                       .refuse(reply: [5, 0] + [5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
                               reason: "the client asks for BIND; tunneld supports only CONNECT"))
    }

    func testANonZeroReservedByteIsAGeneralFailure() {
        XCTAssertEqual(stepForRequest([5, 1, 1, 1, 192, 0, 2, 1, 0, 80]),
                       .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the request's reserved byte is 1, not 0"))
    }

    func testUnknownAddressTypesAreNotSupported() {
        for addressType: UInt8 in [0, 2, 5, 0xff] {
            XCTAssertEqual(stepForRequest([5, 1, 0, addressType, 192, 0, 2, 1, 0, 80]),
                           .refuse(reply: [5, 8, 0, 1, 0, 0, 0, 0, 0, 0], reason: "address type \(addressType) is not supported"))
        }
    }

    func testAnEmptyDomainIsAGeneralFailure() {
        XCTAssertEqual(stepForRequest([5, 1, 0, 3, 0, 0, 80]),
                       .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the client asks for an empty domain name"))
    }

    func testADomainWithANULOrAControlCharacterIsAGeneralFailure() {
        let generalFailure: [UInt8] = [5, 1, 0, 1, 0, 0, 0, 0, 0, 0]
        for name in ["evil\0.example.org", "example.org\nlog line", "\u{1b}[2J", "a\u{7f}b", "a\u{85}b", "a\u{2028}b", "a\u{202e}b"] {
            let bytes = Array(name.utf8)
            // The name is in the reason so the log shows what was asked; the log escapes it.
            XCTAssertEqual(stepForRequest([5, 1, 0, 3, UInt8(bytes.count)] + bytes + [0, 80]),
                           .refuse(reply: generalFailure, reason: "the client asks for '\(name)', which contains a control character"), name.debugDescription)
        }
    }

    func testADomainThatIsNotUTF8IsAGeneralFailure() {
        XCTAssertEqual(stepForRequest([5, 1, 0, 3, 3, 0x61, 0xff, 0x62, 0, 80]),
                       .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: "the domain name the client asks for is not UTF-8"))
    }

    func testPortZeroIsAGeneralFailure() {
        let reason = "the client asks for port 0"
        XCTAssertEqual(stepForRequest([5, 1, 0, 1, 192, 0, 2, 1, 0, 0]), .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: reason))
        XCTAssertEqual(stepForRequest([5, 1, 0, 3, 1, 0x61, 0, 0]), .refuse(reply: [5, 1, 0, 1, 0, 0, 0, 0, 0, 0], reason: reason))
    }

    func testPortsAreReadInNetworkOrder() {
        XCTAssertEqual(stepForRequest([5, 1, 0, 1, 10, 0, 0, 1, 0xff, 0xff]),
                       .connect(target: Target(address: .ipv4([10, 0, 0, 1]), port: 65535), send: [], leftover: []))
        XCTAssertEqual(stepForRequest([5, 1, 0, 1, 10, 0, 0, 1, 0x12, 0x34]),
                       .connect(target: Target(address: .ipv4([10, 0, 0, 1]), port: 0x1234), send: [], leftover: []))
    }

    // MARK: Bounds

    func testA255ByteDomainIsAccepted() {
        let name = String(repeating: "a", count: 63) + "." + String(repeating: "b", count: 63) + "."
            + String(repeating: "c", count: 63) + "." + String(repeating: "d", count: 63)
        XCTAssertEqual(name.utf8.count, 255)
        let request: [UInt8] = [5, 1, 0, 3, 255] + Array(name.utf8) + [0x01, 0xbb]
        XCTAssertEqual(request.count, 4 + 1 + 255 + 2)
        let target = Target(address: .domain(name), port: 443)
        XCTAssertEqual(stepForRequest(request + [1, 2, 3]), .connect(target: target, send: [], leftover: [1, 2, 3]))
        XCTAssertEqual(stepsFeedingOneByteAtATime(greeting + request), expectedByteByByteSteps(request: request, target: target))
        XCTAssertEqual(target.host, name)
    }

    func testTheLongestGreetingEndsAtItsLastMethod() {
        let methods = [UInt8](1...255).map { $0 == 255 ? 0 : $0 }
        let steps = stepsFeedingOneByteAtATime([5, 255] + methods + [5])
        XCTAssertEqual(Array(steps[0..<256]), Array(repeating: .needMore, count: 256))
        XCTAssertEqual(steps[256], .send([5, 0]), "the 257th byte ends the greeting")
        XCTAssertEqual(steps[257], .needMore, "the 258th byte is the request's first")
    }

    func testTheLongestGreetingWithoutNoAuthenticationIsRefusedAtItsLastByte() {
        let methods = [UInt8](1...255)
        let steps = stepsFeedingOneByteAtATime([5, 255] + methods)
        XCTAssertEqual(Array(steps[0..<256]), Array(repeating: .needMore, count: 256))
        XCTAssertEqual(steps[256], .refuse(reply: [5, 0xff], reason: "the client offers no method tunneld supports (no authentication)"))
    }

    func testNothingIsTakenAfterTheHandshakeEnded() {
        var handshake = SocksHandshake()
        XCTAssertEqual(handshake.feed(greeting + ipv4Request), .connect(target: ipv4Target, send: [5, 0], leftover: []))
        XCTAssertEqual(handshake.feed(greeting + ipv4Request), .refuse(reply: [], reason: "the SOCKS handshake had already ended"))

        var refused = SocksHandshake()
        XCTAssertEqual(refused.feed([5, 1, 2]), .refuse(reply: [5, 0xff], reason: "the client offers no method tunneld supports (no authentication)"))
        XCTAssertEqual(refused.feed([0]), .refuse(reply: [], reason: "the SOCKS handshake had already ended"),
                       "a late method does not revive a refused greeting")
    }

    // MARK: Replies

    func testRepliesAreTenBytesWithTheirCode() {
        let expected: [(SocksHandshake.ReplyCode, UInt8)] = [
            (.succeeded, 0), (.generalFailure, 1), (.notAllowed, 2), (.networkUnreachable, 3), (.hostUnreachable, 4),
            (.connectionRefused, 5), (.ttlExpired, 6), (.commandNotSupported, 7), (.addressTypeNotSupported, 8),
        ]
        for (code, byte) in expected {
            XCTAssertEqual(SocksHandshake.reply(code), [5, byte, 0, 1, 0, 0, 0, 0, 0, 0], "\(code)")
        }
    }

    func testChannelOpenFailuresMapToReplies() {
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: "administratively prohibited"), .notAllowed)
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: "connect failed"), .connectionRefused)
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: "Channel open failure (connect failed)"), .connectionRefused,
                       "libssh2's message before SSHSession trims it")
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: "resource shortage"), .hostUnreachable)
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: "unknown channel type"), .hostUnreachable)
        XCTAssertEqual(SocksHandshake.errorCode(forOpenFailure: ""), .hostUnreachable)
        XCTAssertEqual(SocksHandshake.errorCodeForExpiredOpen, .hostUnreachable)
        XCTAssertEqual(SocksHandshake.reply(SocksHandshake.errorCode(forOpenFailure: "administratively prohibited")),
                       [5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
    }

    // MARK: names that are no host names (issue 22)

    func testANameWithASpaceOrOtherNonHostCharactersIsRefusedAtOnce() {
        for name in ["127.0.0.1 .example.org", "a..example.org", ".example.org", "ex ample", "a/b", "xn--caf\u{e9}", String(repeating: "a", count: 64) + ".org"] {
            let bytes = Array(name.utf8)
            let request: [UInt8] = [5, 1, 0, 3, UInt8(bytes.count)] + bytes + [0x01, 0xbb]
            guard case .refuse(let reply, let reason) = stepForRequest(request) else {
                XCTFail("\(name.debugDescription) was not refused")
                continue
            }
            XCTAssertEqual(reply, SocksHandshake.reply(.generalFailure), name)
            XCTAssertTrue(reason.contains("which is not a host name"), reason)
        }
        for name in ["example.org", "example.org.", "mail_relay-2.example.org", "10.9.8.7", "2001:db8::1"] {
            XCTAssertTrue(HostSyntax.isHostName(name), name)
        }
    }
}
