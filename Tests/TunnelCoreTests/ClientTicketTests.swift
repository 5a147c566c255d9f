import Glibc
import Platform
import TunnelConfig
import XCTest
@testable import TunnelCore

/// A client is handed over once, with its ticket; a SOCKS client is handed over anew when it
/// names its target (issue 19).
final class ClientTicketTests: XCTestCase {
    func testASocksHandOverMovesTheDescriptorsAndKeepsTheEarlyBytesFirst() throws {
        var ends: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends), 0)
        defer { close(ends[1]) }
        Socket.setNonBlocking(ends[0])
        let service = SessionEventLoopTests.service(connectTimeout: 3)
        let ended = Locked<[String]>([])
        let ticket = ClientTicket(peer: Endpoint(host: "127.0.0.1", port: 40000), service: service, stats: ServiceStats())
            .finishing { outcome in ended.withLock { $0.append("\(outcome)") } }
        let gate = Connection(ticket: ticket, client: ClientEnd(socket: ends[0]))
        let named = gate.handOver(to: gate.ticket.socks(target: Endpoint(host: "intranet", port: 80), early: Array("GET /".utf8)))

        XCTAssertTrue(gate.isClosed, "the gate's connection holds no descriptor any more")
        XCTAssertFalse(gate.finish(.shutdown, logger: CapturedLog().logger), "and ending it does nothing")
        XCTAssertEqual(named.input, ends[0])
        XCTAssertEqual(named.target, Endpoint(host: "intranet", port: 80))
        XCTAssertEqual(named.toServer.count, 5, "what came after the request goes first")
        XCTAssertTrue(named.isSocksReplyOwed)

        XCTAssertTrue(named.finish(.refused("connect failed"), logger: CapturedLog().logger))
        XCTAssertEqual(ended.withLock { $0 }, ["refused: connect failed"], "told once, by the connection that ended")
        var reply = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(recv(ends[1], &reply, reply.count, 0), 10, "the SOCKS failure reply")
        XCTAssertEqual(reply[1], 5, "connection refused")
    }
}
