import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real etcd cluster (Debian's etcd-server) of `members` members on loopback, for tests:
/// each member in its own scratch directory, on free ports. Members are stopped by pid
/// (`stop(member:)`, `stopAll()`, deinit), so a failing test leaves nothing running.
public final class EtcdCluster: @unchecked Sendable {
    public static let etcdPath = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/etcd"
    /// Whether etcd is installed (tests skip with a message when not).
    public static var available: Bool { FileManager.default.isExecutableFile(atPath: etcdPath) }

    public struct Member: Sendable {
        public var name: String
        public var clientPort: Int
        public var peerPort: Int
        public var tls: Bool
        public var clientURL: String { "\(tls ? "https" : "http")://127.0.0.1:\(clientPort)" }
    }

    /// With TLS: the CA that signed the members' certificate, and a client certificate and
    /// key it also signed (the members ask every client for one).
    public struct Certificates: Sendable {
        public var caFile: String
        public var clientCertFile: String
        public var clientKeyFile: String
    }
    public let certificates: Certificates?

    public let directory: String
    public let members: [Member]
    private let lock = NSLock()
    private var processes: [String: ChildProcess] = [:]

    /// Client URLs of every member.
    public var endpoints: [String] { members.map(\.clientURL) }

    /// `tls`: clients speak HTTPS and must show a certificate the test CA signed (openssl
    /// makes a throwaway CA); the members talk to each other in plain HTTP on loopback.
    public init(members count: Int = 3, tls: Bool = false) throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-etcd")
        var members: [Member] = []
        for index in 1...count {
            members.append(Member(name: "m\(index)", clientPort: try freeLoopbackPort(), peerPort: try freeLoopbackPort(), tls: tls))
        }
        if tls {
            let script = """
                set -e
                cd '\(directory)'
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=Bynar etcd test CA' -keyout ca.key -out ca.crt
                for who in server client; do
                  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$who" -keyout $who.key -out $who.csr
                  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > $who.cnf
                  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.cnf -out $who.crt
                done
                """
            let openssl = try ChildProcess("/bin/sh", ["-c", script], outputPath: "\(directory)/openssl.log")
            guard openssl.waitForExit(timeout: .seconds(30)) == 0 else { throw TestSupportError("openssl failed: " + ((try? String(contentsOfFile: "\(directory)/openssl.log", encoding: .utf8)) ?? "")) }
            certificates = Certificates(caFile: "\(directory)/ca.crt", clientCertFile: "\(directory)/client.crt", clientKeyFile: "\(directory)/client.key")
        } else {
            certificates = nil
        }
        self.members = members
        for member in members { try start(member: member.name) }
        do {
            try waitHealthy(timeout: .seconds(30))
        } catch {
            // The members' own words, as the directory goes with this object.
            throw TestSupportError("\(error)\n" + members.map { member in
                let running = lock.withLock { processes[member.name]?.isRunning ?? false }
                let tail = log(member.name).split(separator: "\n").suffix(15).joined(separator: "\n")
                return "etcd \(member.name) (client \(member.clientPort), peer \(member.peerPort), \(running ? "running" : "exited")):\n\(tail)"
            }.joined(separator: "\n"))
        }
    }

    /// Starts (or restarts, with its data) one member.
    public func start(member name: String) throws {
        guard let member = members.first(where: { $0.name == name }) else { throw TestSupportError("no etcd member \(name)") }
        let cluster = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
        let dataDir = "\(directory)/\(name).data"
        let existing = FileManager.default.fileExists(atPath: dataDir)
        let process = try ChildProcess(EtcdCluster.etcdPath, [
            "--name", name, "--data-dir", dataDir,
            "--listen-client-urls", member.clientURL, "--advertise-client-urls", member.clientURL,
            "--listen-peer-urls", "http://127.0.0.1:\(member.peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(member.peerPort)",
            "--initial-cluster", cluster, "--initial-cluster-state", existing ? "existing" : "new", "--initial-cluster-token", "bynar-test",
            // etcd's default timing: shorter ones held elections under a loaded machine.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ] + (member.tls ? ["--cert-file", "\(directory)/server.crt", "--key-file", "\(directory)/server.key",
                           "--client-cert-auth", "--trusted-ca-file", "\(directory)/ca.crt"] : []), outputPath: "\(directory)/\(name).log")
        lock.withLock { processes[name] = process }
    }

    /// Stops one member (SIGKILL: as if its host died), keeping its data.
    public func stop(member name: String) {
        let process = lock.withLock { processes.removeValue(forKey: name) }
        _ = process?.stop(SIGKILL)
    }

    public func stopAll() {
        for member in members { stop(member: member.name) }
    }

    /// Waits until a member answers `/health` with a leader.
    public func waitHealthy(timeout: Duration) throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            for member in members where lock.withLock({ processes[member.name] != nil }) {
                if let body = try? get(member.clientURL + "/health"), body.contains("\"health\":\"true\"") { return }
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw TestSupportError("etcd did not become healthy in \(timeout); logs in \(directory)")
    }

    /// GET with curl (a test helper, so no HTTP client is linked into the support target).
    func get(_ url: String) throws -> String {
        let pipe = Pipe()
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        var tls: [String] = []
        if let certificates { tls = ["--cacert", certificates.caFile, "--cert", certificates.clientCertFile, "--key", certificates.clientKeyFile] }
        curl.arguments = ["-s", "-m", "2"] + tls + [url]
        curl.standardOutput = pipe
        try curl.run()
        curl.waitUntilExit()
        return String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    /// The log of a member.
    public func log(_ name: String) -> String { (try? String(contentsOfFile: "\(directory)/\(name).log", encoding: .utf8)) ?? "" }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
