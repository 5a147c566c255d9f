// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "tunneld",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tunneld", targets: ["tunneld"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // libssh2, imported by SSHTransport only.
        .systemLibrary(
            name: "CLibSSH2",
            pkgConfig: "libssh2",
            providers: [.apt(["libssh2-1-dev"])]
        ),
        // Linux headers Glibc's module lacks (epoll), imported by Platform only.
        .systemLibrary(name: "CLinux"),
        // What every other module stands on: locks, threads, the one EINTR/EAGAIN layer for
        // descriptors, epoll, child programs.
        .target(name: "Platform", dependencies: ["CLinux"], swiftSettings: [.swiftLanguageMode(.v6)]),
        // The configuration language: pure Swift, no sockets; child programs (ssh -G) only
        // through Platform.
        .target(name: "TunnelConfig", dependencies: ["Platform"]),
        // The libssh2 wrapper: sessions, channels, host keys, authentication.
        .target(
            name: "SSHTransport",
            dependencies: ["CLibSSH2", "TunnelConfig"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Listeners, session pool, event loops and the byte pump.
        .target(
            name: "TunnelCore",
            dependencies: [
                "Platform", "TunnelConfig", "SSHTransport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "tunneld",
            dependencies: [
                "Platform", "TunnelConfig", "TunnelCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "TunnelConfigTests", dependencies: ["Platform", "TunnelConfig", "SSHTransport"]),
        .testTarget(name: "SSHTransportTests", dependencies: ["SSHTransport"]),
        .testTarget(name: "TunnelCoreTests", dependencies: ["Platform", "TunnelCore", "TunnelConfig", .product(name: "Logging", package: "swift-log")]),
        // The command's own parts (logging), through @testable import of the executable.
        .testTarget(name: "TunneldTests", dependencies: ["tunneld", "TunnelConfig", .product(name: "Logging", package: "swift-log")]),
        // Starts a real OpenSSH sshd and the tunneld binary; needs `swift build` first.
        .testTarget(name: "EndToEndTests"),
    ],
    swiftLanguageModes: [.v5]
)
