public import BynarBus
import BynarConfig
import Foundation

/// A real mosquitto running the shipped production configuration (`deploy/mosquitto/
/// mosquitto.conf`): TLS only, two listeners (storage hosts on ``TestBroker/port``, with
/// client id = username; central services and operators on ``centralPort``), no anonymous
/// access, the password files and per-identity ACL that
/// `deploy/mosquitto/bynar-broker-auth` generates for `hosts`, with throwaway certificates.
/// Changed from the shipped file only where it names host paths (certificates, auth files,
/// persistence, log, pid file), the listener (a free loopback port) and `user root` (the
/// scratch files are root's; `deploy/mosquitto/selftest` proves the privilege drop).
/// Attack tests connect to it as the identity an attacker would hold.
public final class ProductionBroker: Sendable {
    public let broker: TestBroker
    /// identity -> password, from the generated credentials file.
    public let passwords: [String: String]
    public let caFile: String
    /// The central services' and operators' listener (8884 in the shipped file).
    public let centralPort: Int
    private let scratch: String
    /// bynar-broker-auth's output directory (hosts, credentials, passwd, passwd-hosts, acl),
    /// which the broker reads on start and on SIGHUP.
    public var authDirectory: String { scratch + "/auth" }

    public init(hosts: [String], admins: [String] = ["ops"]) throws {
        let scratch = try makeTemporaryDirectory(prefix: "bynar-prod-auth")
        // The hosts file lives in the auth directory, where `bynar hosts` keeps it.
        try FileManager.default.createDirectory(atPath: scratch + "/auth", withIntermediateDirectories: true)
        try (hosts.joined(separator: "\n") + "\n").write(toFile: scratch + "/auth/hosts", atomically: true, encoding: .utf8)
        let deploy = packageRoot + "/deploy/mosquitto"
        var auth = [deploy + "/bynar-broker-auth", "--hosts", scratch + "/auth/hosts", "--out", scratch + "/auth"]
        for admin in admins { auth += ["--admin", admin] }
        try ProductionBroker.run(auth, in: scratch)
        try ProductionBroker.run(["/bin/sh", "-c", """
            set -e
            cd '\(scratch)'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=Bynar test CA' -keyout ca.key -out ca.crt
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt
            """], in: scratch)
        var passwords: [String: String] = [:]
        for line in try String(contentsOfFile: scratch + "/auth/credentials", encoding: .utf8).split(separator: "\n") where !line.hasPrefix("#") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            passwords[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        self.passwords = passwords
        self.scratch = scratch
        caFile = scratch + "/ca.crt"
        let shipped = try String(contentsOfFile: deploy + "/mosquitto.conf", encoding: .utf8)
        let centralPort = try freeLoopbackPort()
        self.centralPort = centralPort
        broker = try TestBroker { port, directory in
            shipped.split(separator: "\n", omittingEmptySubsequences: false).compactMap { raw -> String? in
                let line = String(raw)
                if line.hasPrefix("pid_file ") { return nil }
                if line.hasPrefix("user ") { return "user root" }
                if line.hasPrefix("listener 8883") { return "listener \(port) 127.0.0.1" }
                if line.hasPrefix("listener 8884") { return "listener \(centralPort) 127.0.0.1" }
                if line.hasPrefix("persistence_location ") { return "persistence_location \(directory)/" }
                if line.hasPrefix("log_dest ") { return "log_dest file \(directory)/mosquitto.log" }
                if line.hasPrefix("password_file ") { return line.replacingOccurrences(of: "/etc/mosquitto/bynar/", with: scratch + "/auth/") }
                if line.hasPrefix("acl_file ") { return "acl_file \(scratch)/auth/acl" }
                return line.replacingOccurrences(of: "/etc/mosquitto/bynar/", with: scratch + "/")
            }.joined(separator: "\n")
        }
    }

    /// A connected bus for `service` on `host`, logged in as `identity` (default the
    /// production naming: `detector.h1`, `disk-manager.h1`, or the service name for central
    /// services), over TLS verified against the test CA, on the listener of that identity
    /// (or `port`).
    public func bus(service: String, host: String, identity: String? = nil, clientId: String? = nil, announce: Bool = false, port: Int? = nil) async throws -> Bus {
        let user = identity ?? (["detector", "disk-manager"].contains(service) ? "\(service).\(host)" : service)
        guard let password = passwords[user] else { throw TestSupportError("no identity \(user) in the generated credentials") }
        let storage = user.hasPrefix("detector.") || user.hasPrefix("disk-manager.")
        return try await connectedBus(broker, service: service, host: host, clientId: clientId ?? "\(service)-\(host)", announce: announce) {
            $0.port = port ?? (storage ? self.broker.port : self.centralPort)
            $0.host = "localhost"
            $0.username = user
            $0.password = password
            $0.tls = TLSConfig(caFile: self.caFile)
        }
    }

    /// The `broker` members a service's config needs to log in as `identity` (host, TLS,
    /// credentials; the port is the caller's: ``TestBroker/port`` or ``centralPort``).
    public func brokerConfigJSON(identity: String) -> String {
        #""host": "localhost", "username": "\#(identity)", "password": "\#(passwords[identity] ?? "")", "tls": {"ca_file": "\#(caFile)"}"#
    }

    deinit {
        try? FileManager.default.removeItem(atPath: scratch)
    }

    private static func run(_ arguments: [String], in directory: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestSupportError("\(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
    }
}
