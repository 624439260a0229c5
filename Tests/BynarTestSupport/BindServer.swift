public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A REAL BIND 9 (`named` from Debian's bind9) on a free loopback port, authoritative for
/// one zone that takes TSIG-signed dynamic updates (RFC 2136): what the dns-roundrobin
/// handler changes in production. Started in the foreground (`-g`), stopped by pid.
public final class BindServer: @unchecked Sendable {
    public static let namedPath = "/usr/sbin/named"
    public static var available: Bool {
        ["/usr/sbin/named", "/usr/bin/nsupdate", "/usr/bin/dig", "/usr/sbin/tsig-keygen"].allSatisfy(FileManager.default.isExecutableFile(atPath:))
    }

    public let directory: String
    public let port: Int
    public let zone: String
    /// The TSIG key (tsig-keygen output) the zone takes updates with.
    public let keyFile: String
    private let process: ChildProcess

    public init(zone: String = "rr.test") throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-bind")
        port = try freeLoopbackPort()
        self.zone = zone
        keyFile = directory + "/update.key"
        let keygen = try ChildProcess("/usr/sbin/tsig-keygen", ["-a", "hmac-sha256", "bynar-update"], outputPath: keyFile)
        guard keygen.waitForExit(timeout: .seconds(10)) == 0 else { throw TestSupportError("tsig-keygen failed") }
        try """
            $TTL 60
            @ IN SOA ns.\(zone). hostmaster.\(zone). 1 60 60 600 60
            @ IN NS ns.\(zone).
            ns IN A 127.0.0.1
            """.write(toFile: directory + "/zone.db", atomically: true, encoding: .utf8)
        try """
            include "\(keyFile)";
            options {
                directory "\(directory)";
                listen-on port \(port) { 127.0.0.1; };
                listen-on-v6 { none; };
                pid-file "\(directory)/named.pid";
                recursion no;
                dnssec-validation no;
            };
            controls { };
            zone "\(zone)" { type primary; file "\(directory)/zone.db"; allow-update { key bynar-update; }; };
            """.write(toFile: directory + "/named.conf", atomically: true, encoding: .utf8)
        process = try ChildProcess(BindServer.namedPath, ["-g", "-c", directory + "/named.conf"], outputPath: directory + "/named.log")
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if log.contains("running") { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        stop()
        throw TestSupportError("named did not start; log:\n\(log)")
    }

    public var log: String { (try? String(contentsOfFile: directory + "/named.log", encoding: .utf8)) ?? "" }

    /// The addresses the server answers for `name` (A, or AAAA), sorted.
    public func addresses(_ name: String, type: String = "A") throws -> [String] {
        let output = try FaultyDisk.run("/usr/bin/dig", ["+tcp", "+norecurse", "+short", "-p", "\(port)", "@127.0.0.1", name, type], timeout: .seconds(15))
        return output.split(separator: "\n").map(String.init).filter { !$0.hasPrefix(";") && !$0.isEmpty }.sorted()
    }

    public func stop() {
        _ = process.stop(SIGTERM, timeout: .seconds(10))
        try? FileManager.default.removeItem(atPath: directory)
    }
}
