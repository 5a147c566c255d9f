import Foundation

// The libFuzzer entry of `.ci/sanitizers fuzz`, which compiles this file into the
// TunnelConfig module with `swiftc -sanitize=fuzzer -parse-as-library` (libFuzzer brings
// main). TUNNELD_FUZZ_TARGET chooses the target: stanzas (default), known_hosts or permits. The
// folders beside this file are the seed corpus; FuzzTests replays them in `swift test`.
private let target: ([UInt8]) -> Void = switch ProcessInfo.processInfo.environment["TUNNELD_FUZZ_TARGET"] {
case "known_hosts": FuzzTargets.knownHosts
case "permits": FuzzTargets.permits
default: FuzzTargets.stanzas
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    target(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
