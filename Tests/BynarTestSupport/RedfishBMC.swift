public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A throwaway CA and a certificate for `localhost`/127.0.0.1 it signed (what a BMC
/// shows), plus a second, unrelated CA a client must NOT accept the BMC with.
public struct RedfishTestCA: Sendable {
    public let directory: String
    public var caFile: String { directory + "/ca.crt" }
    public var otherCAFile: String { directory + "/other-ca.crt" }
    public var certFile: String { directory + "/bmc.crt" }
    public var keyFile: String { directory + "/bmc.key" }

    public init(directory: String) throws {
        self.directory = directory
        let script = """
            set -e
            cd '\(directory)'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=Bynar BMC test CA' -keyout ca.key -out ca.crt
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=Some other CA' -keyout other-ca.key -out other-ca.crt
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=localhost' -keyout bmc.key -out bmc.csr
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf
            openssl x509 -req -in bmc.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out bmc.crt
            """
        let openssl = try ChildProcess("/bin/sh", ["-c", script], outputPath: directory + "/openssl.log")
        guard openssl.waitForExit(timeout: .seconds(30)) == 0 else {
            throw TestSupportError("openssl failed: " + ((try? String(contentsOfFile: directory + "/openssl.log", encoding: .utf8)) ?? ""))
        }
    }
}

/// Waits for a port file a child writes once it listens.
private func waitForPort(_ portFile: String, _ process: ChildProcess, log: String, what: String) throws -> Int {
    let deadline = Date().addingTimeInterval(20)
    while Date() < deadline {
        if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return port
        }
        if !process.isRunning { break }
        usleep(20_000)
    }
    process.stop(SIGKILL)
    throw TestSupportError("\(what) did not start; log:\n" + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? ""))
}

/// The STAND-IN Redfish BMC (`Tests/StandIns/redfish/redfish_standin.py`): serves a copy
/// of a DMTF-shaped mockup tree (`Tests/Fixtures/redfish/<name>`) over HTTPS with the
/// session login and basic auth a real BMC offers, for what sushy-emulator does not model
/// (Power, Memory, sessions, unhealthy parts). ``set(_:_:)`` edits a resource in place.
public final class RedfishStandIn: @unchecked Sendable {
    public let port: Int
    public let directory: String
    public let ca: RedfishTestCA
    public let user = "bmc-admin"
    public let password = "calvin:with-a-colon"
    private let process: ChildProcess

    public var baseURL: String { "https://127.0.0.1:\(port)" }
    public var mockup: String { directory + "/mockup" }

    public init(mockup name: String = "rackmount") throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-redfish")
        ca = try RedfishTestCA(directory: directory)
        let copy = try ChildProcess("/bin/cp", ["-R", "\(packageRoot)/Tests/Fixtures/redfish/\(name)", directory + "/mockup"], outputPath: directory + "/cp.log")
        guard copy.waitForExit(timeout: .seconds(10)) == 0 else { throw TestSupportError("cannot copy the mockup \(name)") }
        let portFile = directory + "/port"
        process = try ChildProcess("/usr/bin/python3", [
            "\(packageRoot)/Tests/StandIns/redfish/redfish_standin.py", "--mockup", directory + "/mockup", "--port-file", portFile,
            "--cert", ca.certFile, "--key", ca.keyFile, "--user", user, "--password", password,
        ], outputPath: directory + "/standin.log")
        port = try waitForPort(portFile, process, log: directory + "/standin.log", what: "the stand-in Redfish BMC")
    }

    /// Rewrites the resource at `path` (`/redfish/v1/...`) with `change` applied to its JSON.
    public func edit(_ path: String, _ change: (inout [String: Any]) -> Void) throws {
        let file = mockup + path + "/index.json"
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))) as! [String: Any]
        change(&object)
        try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: file))
    }

    /// Forgets every session, as a BMC reset does.
    public func expireSessions() throws {
        try control("POST", "/_standin/expire-sessions")
    }

    /// The requests seen: (method, path, auth kind: "session", "basic" or nil).
    public func requests() throws -> [(method: String, path: String, auth: String?)] {
        let data = try control("GET", "/_standin/requests")
        let list = try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
        return list.map { ($0["method"] as! String, $0["path"] as! String, $0["auth"] as? String) }
    }

    @discardableResult
    private func control(_ method: String, _ path: String) throws -> Data {
        // curl with the test CA: Foundation's URLSession is not on every test machine.
        let out = directory + "/control.out"
        let curl = try ChildProcess("/usr/bin/curl", ["-sf", "--cacert", ca.caFile, "-X", method, "-o", out, baseURL + path], outputPath: directory + "/curl.log")
        guard curl.waitForExit(timeout: .seconds(10)) == 0 else { throw TestSupportError("stand-in control \(method) \(path) failed") }
        return (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data()
    }

    public func stop() { process.stop(SIGTERM) }

    deinit {
        process.stop(SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// OpenStack's Redfish emulator (`sushy-emulator` from PyPI's sushy-tools, installed by
/// `scripts/install-deps` in the venv /opt/sushy-tools), with its fake systems driver and
/// static chassis, storage and drives, HTTPS with the test CA's certificate, and an
/// htpasswd (bcrypt) auth file: the resources it models (Systems, Storage, Drives,
/// Chassis, Thermal), always healthy.
public final class SushyEmulator: @unchecked Sendable {
    public static let executable = ProcessInfo.processInfo.environment["BYNAR_SUSHY_EMULATOR"] ?? "/opt/sushy-tools/bin/sushy-emulator"
    public static var available: Bool { FileManager.default.isExecutableFile(atPath: executable) }
    public static let unavailableReason = "sushy-emulator is not installed at \(executable) (scripts/install-deps installs sushy-tools in /opt/sushy-tools; BYNAR_SUSHY_EMULATOR names another)"
    public static let systemUUID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
    public static let driveSerial = "1234570"

    public let port: Int
    public let directory: String
    public let ca: RedfishTestCA
    public let user = "bmc-admin"
    public let password = "sushy-secret"
    private let process: ChildProcess

    public var baseURL: String { "https://127.0.0.1:\(port)" }

    public init() throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-sushy")
        ca = try RedfishTestCA(directory: directory)
        let python = (SushyEmulator.executable as NSString).deletingLastPathComponent + "/python3"
        let portFile = directory + "/port"
        // A free port (sushy-emulator takes a fixed one), the bcrypt htpasswd, the config.
        let setup = try ChildProcess(python, ["-c", """
            import bcrypt, socket, sys
            d = sys.argv[1]
            s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
            open(d + "/htpasswd", "w").write("\(user):" + bcrypt.hashpw(b"\(password)", bcrypt.gensalt(rounds=4)).decode() + "\\n")
            u = "\(SushyEmulator.systemUUID)"
            open(d + "/sushy.conf", "w").write(f'''
            SUSHY_EMULATOR_LISTEN_IP = "127.0.0.1"
            SUSHY_EMULATOR_LISTEN_PORT = {port}
            SUSHY_EMULATOR_SSL_CERT = "{d}/bmc.crt"
            SUSHY_EMULATOR_SSL_KEY = "{d}/bmc.key"
            SUSHY_EMULATOR_AUTH_FILE = "{d}/htpasswd"
            SUSHY_EMULATOR_FAKE_DRIVER = True
            SUSHY_EMULATOR_STATE_DIR = "{d}/state"
            SUSHY_EMULATOR_CHASSIS = [{{"Id": "Chassis1", "Name": "Chassis", "UUID": "15693887-7984-9484-3272-842188918912", "contains": ["{u}"]}}]
            SUSHY_EMULATOR_STORAGE = {{"{u}": [{{"Id": "1", "Name": "Local Storage Controller", "StorageControllers": [{{"MemberId": "0", "Name": "Contoso Integrated RAID", "SpeedGbps": 12}}], "Drives": ["32ADF365C6C1B7BD"]}}]}}
            SUSHY_EMULATOR_DRIVES = {{("{u}", "1"): [{{"Id": "32ADF365C6C1B7BD", "Name": "Drive Sample", "CapacityBytes": 899527000000, "Protocol": "SAS"}}]}}
            '''.replace("\\n            ", "\\n"))
            open(d + "/port", "w").write(str(port))
            """, directory], outputPath: directory + "/setup.log")
        guard setup.waitForExit(timeout: .seconds(30)) == 0 else {
            throw TestSupportError("sushy-emulator setup failed: " + ((try? String(contentsOfFile: directory + "/setup.log", encoding: .utf8)) ?? ""))
        }
        let port = Int((try String(contentsOfFile: portFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))!
        self.port = port
        process = try ChildProcess(SushyEmulator.executable, ["--config", directory + "/sushy.conf"], outputPath: directory + "/sushy.log")
        // Ready when the service root answers (it is open without auth).
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let probe = try ChildProcess("/usr/bin/curl", ["-sf", "--cacert", ca.caFile, "-o", "/dev/null", "https://127.0.0.1:\(port)/redfish/v1/"], outputPath: directory + "/probe.log")
            if probe.waitForExit(timeout: .seconds(5)) == 0 { return }
            if !process.isRunning { break }
            usleep(100_000)
        }
        process.stop(SIGKILL)
        throw TestSupportError("sushy-emulator did not answer; log:\n" + ((try? String(contentsOfFile: directory + "/sushy.log", encoding: .utf8)) ?? ""))
    }

    public func stop() { process.stop(SIGTERM) }

    deinit {
        process.stop(SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
