import Glibc
import Logging
import Platform
import TunnelConfig

/// Writes each log event to syslog (`log_type = SYSLOG facility [level]`), for a tunneld with
/// or without systemd: a datagram to /dev/log in the form syslog(3) sends,
/// `<PRIORITY>Mmm dd hh:mm:ss tunneld[PID]: text`.
///
/// It speaks that protocol itself rather than calling syslog(3), whose socket path is fixed
/// and whose identity and facility are one per process: here each service has its facility,
/// and a test can point the socket elsewhere. A line syslog does not take (no daemon
/// listening) is written to standard error instead.
struct SyslogLogHandler: LogHandler {
    /// Where syslog daemons listen.
    static let defaultSocketPath = "/dev/log"

    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let socket: SyslogSocket
    let facility: SyslogFacility
    /// The priority of lines logged at info; the others keep their own.
    let infoLevel: SyslogLevel

    init(label: String, socket: SyslogSocket, facility: SyslogFacility, infoLevel: SyslogLevel) {
        self.label = label
        self.socket = socket
        self.facility = facility
        self.infoLevel = infoLevel
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let text = LineLogHandler.text(level: event.level, message: event.message, metadata: metadata.merging(event.metadata ?? [:]) { _, new in new })
        let datagram = Self.datagram(text, priority: priority(of: event.level), at: time(nil), pid: getpid())
        if !socket.send(datagram) {
            StandardStreams.write(LineLogHandler(label: label).line(for: event), to: 2)
        }
    }

    /// `facility * 8 + severity`; info lines take `infoLevel`.
    func priority(of level: Logger.Level) -> Int32 {
        let severity = level == .info ? infoLevel.rawValue : SyslogPriority(level).rawValue
        return facility.code * 8 + severity
    }

    /// The datagram syslog(3) would send: `<PRI>`, the local time as `Mmm dd hh:mm:ss`,
    /// `tunneld[PID]: `, then the text.
    static func datagram(_ text: String, priority: Int32, at seconds: time_t, pid: pid_t) -> [UInt8] {
        var when = seconds
        var parts = tm()
        localtime_r(&when, &parts)
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let day = parts.tm_mday < 10 ? " \(parts.tm_mday)" : "\(parts.tm_mday)"
        let stamp = "\(months[Int(parts.tm_mon)]) \(day) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
        return Array("<\(priority)>\(stamp) tunneld[\(pid)]: \(text)".utf8)
    }
}

/// The process's datagram socket to syslog, shared by every handler; it connects when first
/// used and again after a failure (syslog restarted), as syslog(3) does.
final class SyslogSocket: @unchecked Sendable {
    let path: String
    private let lock = Lock()
    private var fd: Int32 = -1

    init(path: String = SyslogLogHandler.defaultSocketPath) {
        self.path = path
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// Sends one datagram. Returns whether syslog took it.
    func send(_ bytes: [UInt8]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        for _ in 0..<2 {
            if fd < 0 { fd = Self.connected(to: path) }
            guard fd >= 0 else { return false }
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent == bytes.count { return true }
            close(fd)
            fd = -1
        }
        return false
    }

    private static func connected(to path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            return -1
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else {
            close(fd)
            return -1
        }
        return fd
    }
}
