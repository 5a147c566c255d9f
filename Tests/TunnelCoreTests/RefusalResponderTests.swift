import Glibc
import XCTest
import TunnelConfig
@testable import TunnelCore

/// The responder over real sockets: it answers on its own thread, closes after the
/// conversation, within its time limit, and closes at once when full.
final class RefusalResponderTests: XCTestCase {
    /// A connected pair: the end handed to the responder (non-blocking) and the test's client end.
    private func pair() -> (ClientEnd, Int32) {
        var ends: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends), 0)
        Socket.setNonBlocking(ends[0])
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(ends[1], SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return (ClientEnd(socket: ends[0]), ends[1])
    }

    /// Reads until EOF (or the 5 s receive timeout); returns the text and whether EOF came.
    private func readAll(_ fd: Int32) -> (String, Bool) {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count == 0 { return (String(decoding: bytes, as: UTF8.self), true) }
            if count < 0 { return (String(decoding: bytes, as: UTF8.self), false) }
            bytes += buffer[0..<count]
        }
    }

    private func readLine(_ fd: Int32) -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 {
            line.append(byte)
            if byte == UInt8(ascii: "\n") { break }
        }
        return String(decoding: line, as: UTF8.self)
    }

    private func send(_ fd: Int32, _ text: String) {
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }

    func testSMTPClientGetsTheGreetingAnAnswerPerCommandAndTheCloseAfterQUIT() {
        let responder = RefusalResponder(capacity: 4, timeLimit: .seconds(5))
        let (end, client) = pair()
        defer { close(client) }
        let started = ContinuousClock.now
        responder.answer(end, with: RefusalConversation(kind: .smtp, reason: "tunneld smtp: ssh-failed: down"))
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(50), "handing over never waits on the client")
        XCTAssertEqual(readLine(client), "421 4.4.0 tunneld smtp: ssh-failed: down\r\n")
        send(client, "EHLO me\r\n")
        XCTAssertEqual(readLine(client), "421 4.4.0 tunneld smtp: ssh-failed: down\r\n")
        send(client, "QUIT\r\n")
        let (rest, isEOF) = readAll(client)
        XCTAssertEqual(rest, "221 2.0.0 tunneld smtp: ssh-failed: down\r\n")
        XCTAssertTrue(isEOF)
    }

    func testHTTPClientGetsThe502AfterItsRequest() {
        let responder = RefusalResponder()
        let (end, client) = pair()
        defer { close(client) }
        responder.answer(end, with: RefusalConversation(kind: .http, reason: "tunneld web: limit: instances"))
        send(client, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let (response, isEOF) = readAll(client)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), response)
        XCTAssertTrue(response.hasSuffix("\r\n\r\ntunneld web: limit: instances\n"), response)
        XCTAssertTrue(isEOF)
    }

    func testASilentClientIsClosedAtTheTimeLimit() {
        let responder = RefusalResponder(capacity: 4, timeLimit: .milliseconds(300))
        let (end, client) = pair()
        defer { close(client) }
        let started = ContinuousClock.now
        responder.answer(end, with: RefusalConversation(kind: .smtp, reason: "r"))
        let (greeting, isEOF) = readAll(client)
        let elapsed = ContinuousClock.now - started
        XCTAssertEqual(greeting, "421 4.4.0 r\r\n")
        XCTAssertTrue(isEOF)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(250))
        XCTAssertLessThan(elapsed, .seconds(2))
        XCTAssertEqual(responder.activeCount, 0)
    }

    func testWhenFullAClientIsClosedAtOnceWithoutAWord() {
        let responder = RefusalResponder(capacity: 1, timeLimit: .seconds(5))
        let (first, firstClient) = pair()
        let (second, secondClient) = pair()
        defer { close(firstClient); close(secondClient) }
        responder.answer(first, with: RefusalConversation(kind: .smtp, reason: "r"))
        responder.answer(second, with: RefusalConversation(kind: .smtp, reason: "r"))
        XCTAssertEqual(readAll(secondClient).0, "")
        XCTAssertEqual(readLine(firstClient), "421 4.4.0 r\r\n")
        XCTAssertEqual(responder.activeCount, 1)
    }

    func testAServiceWithoutRefusalOrAnOutcomeThatIsNoRefusalIsClosedAtOnce() {
        let responder = RefusalResponder()
        var service = Service(name: "s", location: SourceLocation(file: "f", line: 1),
                              listening: Listening(address: Endpoint(host: "127.0.0.1", port: 1)),
                              route: Route(server: Endpoint(host: "h", port: 22), user: "u"),
                              forwarding: Forwarding(target: Endpoint(host: "t", port: 25)))
        let (plain, plainClient) = pair()
        responder.close(plain, after: .sshFailed("down"), service: service)
        XCTAssertEqual(readAll(plainClient).0, "")
        service.refusal = .pop3
        let (finished, finishedClient) = pair()
        responder.close(finished, after: .ok, service: service)
        XCTAssertEqual(readAll(finishedClient).0, "")
        let (refused, refusedClient) = pair()
        responder.close(refused, after: .sshFailed("down"), service: service)
        XCTAssertEqual(readAll(refusedClient).0, "-ERR tunneld s: ssh-failed: down\r\n")
        [plainClient, finishedClient, refusedClient].forEach { close($0) }
    }
}
