import TunnelConfig
import XCTest
@testable import TunnelCore

final class SessionSettingsTests: XCTestCase {
    private func service(_ name: String, linger: Double, persistent: Bool, keepalive: Keepalive, timeout: Double) -> Service {
        Service(
            name: name, location: SourceLocation(file: "test.conf", line: 1),
            listening: Listening(address: Endpoint(host: "127.0.0.1", port: 7777)),
            route: Route(server: Endpoint(host: "bastion.example.org", port: 22), user: "kiosk"),
            forwarding: Forwarding(target: Endpoint(host: "carbon", port: 6001)),
            policy: SessionPolicy(linger: linger, isPersistent: persistent, keepalive: keepalive, connectTimeout: timeout))
    }

    func testServicesSharingASessionMergeToTheMostDemandingSettings() {
        let a = service("a", linger: 5, persistent: false, keepalive: Keepalive(interval: 15, count: 3), timeout: 4)
        let b = service("b", linger: 60, persistent: true, keepalive: Keepalive(interval: 5, count: 2), timeout: 10)
        XCTAssertEqual(a.sessionKey, b.sessionKey)
        let settings = SessionSettings(key: a.sessionKey, services: [a, b])
        XCTAssertEqual(settings.linger, 60)
        XCTAssertTrue(settings.isPersistent)
        XCTAssertEqual(settings.keepalive, Keepalive(interval: 5, count: 2))
        XCTAssertEqual(settings.connectTimeout, 10)
        XCTAssertEqual(settings.silenceLimit, 15)
    }

    func testJumpHostsGetSessionSettingsFromEveryServiceBehindThem() {
        let bastion = Route(server: Endpoint(host: "bastion", port: 22), user: "kiosk")
        let relay = Route(server: Endpoint(host: "relay", port: 22), user: "kiosk")
        var a = service("a", linger: 5, persistent: true, keepalive: Keepalive(interval: 15, count: 3), timeout: 4)
        a.route.jump = [bastion, relay]
        var b = service("b", linger: 90, persistent: false, keepalive: Keepalive(interval: 7, count: 3), timeout: 4)
        b.route.server = Endpoint(host: "mail", port: 22)
        b.route.jump = [bastion]
        let settings = SessionSettings.byKey([a, b])
        XCTAssertEqual(Set(settings.keys), [a.sessionKey, b.sessionKey, bastion, Route(server: relay.server, user: "kiosk", jump: [bastion])])
        let shared = settings[bastion]!
        XCTAssertEqual(shared.linger, 90, "the longest linger of the services behind it")
        XCTAssertEqual(shared.keepalive.interval, 7)
        XCTAssertFalse(shared.isPersistent, "kept up by the persistent session it carries, not on its own")
        XCTAssertTrue(settings[a.sessionKey]!.isPersistent)
        XCTAssertEqual(settings[a.sessionKey]!.linger, 5)
    }

    func testAClientWaitingOnAQuietSessionGetsAShortProbeBound() {
        let a = service("a", linger: 5, persistent: false, keepalive: Keepalive(), timeout: 10)
        let settings = SessionSettings(key: a.sessionKey, services: [a])
        XCTAssertEqual(settings.urgentProbeBound, 3)
        XCTAssertEqual(settings.openTimeout, 10)
        XCTAssertEqual(settings.maxSessions, 4)
    }

    func testHostKeyAlgorithmsAreThoseLibSSH2CanCheckInKnownHostsOrder() {
        XCTAssertEqual(
            SessionConnector.supportedAlgorithms(in: ["ssh-ed25519", "ssh-dss", "ecdsa-sha2-nistp256", "ssh-ed25519"]),
            ["ssh-ed25519", "ecdsa-sha2-nistp256"])
        XCTAssertEqual(SessionConnector.normalizedFingerprint(" SHA256:abc= "), "SHA256:abc")
    }
}
