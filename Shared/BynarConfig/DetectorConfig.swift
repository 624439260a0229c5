#if canImport(Glibc)
import Glibc
#endif

/// The detector's section of the host config (`"detector": {...}`).
public struct DetectorConfig: Codable, Sendable, Equatable {
    /// Full check of every disk (filesystems, write probe) this often. Kernel I/O errors and
    /// disks coming or going trigger a check at once, whatever this says.
    public var checkIntervalSeconds = 60
    /// SMART is sampled at most this often per disk (it wakes sleeping drives and costs a
    /// few hundred ms); a kernel error forces a sample.
    public var smartIntervalSeconds = 600
    /// Write, read back and fsync 4 KiB with O_DIRECT on each mounted filesystem per check.
    public var probe = true
    public var probeTimeoutSeconds = 10
    /// Disks never to judge or repair: shell patterns matched against the device path, key,
    /// serial, WWN or by-path (`/dev/sda`, `serial-ZA1*`, ...).
    public var exclude: [String] = []
    /// When not empty, the only disks this detector watches: shell patterns as for `exclude`.
    /// Every other disk is neither checked nor reported, as if it were on another machine
    /// (several hosts' services sharing one machine: `scripts/chaos`; a host where Bynar
    /// looks after only some slots).
    public var watchOnly: [String] = []
    public var smartctlPath = "/usr/sbin/smartctl"
    public var kmsgPath = "/dev/kmsg"
    /// A disk no cluster uses (nothing mounted, no holders, exclusive open works) gets a
    /// read-only `e2fsck -n` / `xfs_repair -n` this often; 0 turns it off.
    public var fsckIntervalSeconds = 86_400
    public var fsckTimeoutSeconds = 600
    /// ...and only after every check for this long found it unused.
    public var fsckQuietSeconds = 3600
    /// SMART samples kept per disk for trends.
    public var smartSamplesKept = 100
    /// Read 4 KiB with O_DIRECT at four places across each non-system disk per check
    /// (read-only, safe under a running OSD): how a dead disk with no filesystem to probe
    /// and no SMART is seen. Every read failing twice in a row makes the disk FAILED.
    public var readProbe = true
    /// Watch a Ceph cluster's view of this host's OSDs (down OSDs, scrub errors) as
    /// evidence about their disks; off when absent.
    public var ceph: DetectorCephConfig?
    /// Watch this host's ZFS pools (vdev states and errors, capacity, scrubs, resilvers);
    /// off when absent.
    public var zfs: DetectorZFSConfig?
    /// Applications this host serves, checked PicoRed's way (``AppCheckConfig``); their
    /// states go on the bus retained per app.
    public var apps: [AppCheckConfig] = []
    /// Peers ("host:port", TCP) this host tries when it cannot reach the broker: reaching
    /// neither, it is isolated and does not declare its apps up (PicoRed's rule).
    public var appPeers: [String] = []
    /// This host's address, handed to its apps' local handlers as `<ip>`; default: the host
    /// name resolved, else the name (as the orchestrator's hooks do without `address`).
    public var appAddress: String?
    /// Read this server's BMC over Redfish (power supplies, fans, temperatures, memory,
    /// storage controllers and drives); off when absent.
    public var redfish: DetectorRedfishConfig?

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "detector." + field, problem: text)) }
        if checkIntervalSeconds < 1 { problem("check_interval_seconds", "must be at least 1, got \(checkIntervalSeconds)") }
        if smartIntervalSeconds < 1 { problem("smart_interval_seconds", "must be at least 1, got \(smartIntervalSeconds)") }
        if probeTimeoutSeconds < 1 { problem("probe_timeout_seconds", "must be at least 1, got \(probeTimeoutSeconds)") }
        if fsckIntervalSeconds < 0 { problem("fsck_interval_seconds", "must be 0 (off) or more, got \(fsckIntervalSeconds)") }
        if fsckQuietSeconds < 0 { problem("fsck_quiet_seconds", "must be 0 or more, got \(fsckQuietSeconds)") }
        if fsckTimeoutSeconds < 1 { problem("fsck_timeout_seconds", "must be at least 1, got \(fsckTimeoutSeconds)") }
        if smartSamplesKept < 2 { problem("smart_samples_kept", "must be at least 2 (trends need two), got \(smartSamplesKept)") }
        if exclude.contains(where: \.isEmpty) { problem("exclude", "patterns must not be empty") }
        if watchOnly.contains(where: \.isEmpty) { problem("watch_only", "patterns must not be empty") }
        if let ceph {
            if ceph.configFile.isEmpty { problem("ceph.config_file", "must not be empty") }
            if ceph.clientName.isEmpty { problem("ceph.client_name", "must not be empty") }
            if ceph.pollSeconds < 1 { problem("ceph.poll_seconds", "must be at least 1, got \(ceph.pollSeconds)") }
        }
        if let zfs {
            if zfs.zpoolPath.isEmpty { problem("zfs.zpool_path", "must not be empty") }
            if zfs.pollSeconds < 1 { problem("zfs.poll_seconds", "must be at least 1, got \(zfs.pollSeconds)") }
            if !(1...100).contains(zfs.capacityAlarmPercent) { problem("zfs.capacity_alarm_percent", "must be 1 to 100, got \(zfs.capacityAlarmPercent)") }
            if zfs.scrubMaxAgeDays < 0 { problem("zfs.scrub_max_age_days", "must be 0 (off) or more, got \(zfs.scrubMaxAgeDays)") }
        }
        var names: Set<String> = []
        for (index, app) in apps.enumerated() {
            let field = "apps.\(index)"
            if let why = app.problem(field: field) { problems.append(why) }
            if !names.insert(app.name).inserted { problem("\(field).name", "\"\(app.name)\" is checked twice") }
        }
        for (index, peer) in appPeers.enumerated() where AppCheckConfig.hostPort(peer) == nil {
            problem("app_peers.\(index)", "must be host:port, got \"\(peer)\"")
        }
        if let redfish { problems += redfish.validate() }
        return problems
    }
}

/// One application a host serves and how to check it (PicoRed's fields): exactly one of
/// `http` (a plain-HTTP GET answering `expect_status`, and containing `expect_body` when
/// set), `tcp` ("host:port" accepting a connection) or `command` (an absolute path and its
/// arguments, exiting 0), every `interval_seconds`, each within `timeout_seconds`; DOWN after
/// `tolerance` failures in a row, UP again after `recover` successes in a row. `handler` (an
/// absolute path) runs on this host as `HANDLER <app> <ip> <up|down>` when the app goes up or
/// down (PicoRed's local handler, for the app's own recovery), within `handler_timeout_seconds`.
public struct AppCheckConfig: Codable, Sendable, Equatable {
    public var name: String
    public var http: String?
    public var expectStatus = 200
    public var expectBody: String?
    public var tcp: String?
    public var command: [String]?
    public var intervalSeconds = 10
    public var timeoutSeconds = 5
    public var tolerance = 3
    public var recover = 1
    public var handler: String?
    public var handlerTimeoutSeconds = 30

    public init(name: String) { self.name = name }

    private enum CodingKeys: String, CodingKey {
        case name, http, expectStatus, expectBody, tcp, command, intervalSeconds, timeoutSeconds, tolerance, recover, handler, handlerTimeoutSeconds
    }

    /// Array items are not laid over defaults, so only `name` and the check are required.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        http = try container.decodeIfPresent(String.self, forKey: .http)
        expectStatus = try container.decodeIfPresent(Int.self, forKey: .expectStatus) ?? 200
        expectBody = try container.decodeIfPresent(String.self, forKey: .expectBody)
        tcp = try container.decodeIfPresent(String.self, forKey: .tcp)
        command = try container.decodeIfPresent([String].self, forKey: .command)
        intervalSeconds = try container.decodeIfPresent(Int.self, forKey: .intervalSeconds) ?? 10
        timeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .timeoutSeconds) ?? 5
        tolerance = try container.decodeIfPresent(Int.self, forKey: .tolerance) ?? 3
        recover = try container.decodeIfPresent(Int.self, forKey: .recover) ?? 1
        handler = try container.decodeIfPresent(String.self, forKey: .handler)
        handlerTimeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .handlerTimeoutSeconds) ?? 30
    }

    /// "host:port" split, or nil.
    public static func hostPort(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        return (host, port)
    }

    /// An `http://host[:port]/path` URL split, or nil.
    public static func httpURL(_ text: String) -> (host: String, port: Int, path: String)? {
        guard text.hasPrefix("http://") else { return nil }
        let rest = text.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        guard !authority.isEmpty else { return nil }
        if let parsed = hostPort(String(authority)) { return (parsed.host, parsed.port, path.isEmpty ? "/" : String(path)) }
        guard !authority.contains(":") else { return nil }
        return (String(authority), 80, path.isEmpty ? "/" : String(path))
    }

    func problem(field: String) -> FieldError? {
        func bad(_ name: String, _ text: String) -> FieldError { FieldError(field: "detector.\(field).\(name)", problem: text) }
        let unfit = name.utf8.contains { $0 < 0x20 || $0 == 0x7F || "/+#%".utf8.contains($0) }
        if name.isEmpty || name.utf8.count > 100 || unfit { return bad("name", "must be 1 to 100 bytes without / + # % or control characters, got \"\(name)\"") }
        let checks = [http != nil, tcp != nil, command != nil].filter { $0 }.count
        if checks != 1 { return bad("http", "give exactly one of http, tcp and command (\(checks) given)") }
        if let http {
            if http.hasPrefix("https://") { return bad("http", "https is not checked by the agent itself; use a command check (curl --fail ...), got \"\(http)\"") }
            if Self.httpURL(http) == nil { return bad("http", "must be http://host[:port]/path, got \"\(http)\"") }
            if !(100...599).contains(expectStatus) { return bad("expect_status", "must be an HTTP status 100 to 599, got \(expectStatus)") }
        }
        if let tcp, Self.hostPort(tcp) == nil { return bad("tcp", "must be host:port, got \"\(tcp)\"") }
        if let command {
            guard let executable = command.first, executable.hasPrefix("/") else { return bad("command", "must start with an absolute path, got \(command)") }
            if access(executable, X_OK) != 0 { return bad("command", "\(executable) is not executable") }
        }
        if intervalSeconds < 1 { return bad("interval_seconds", "must be at least 1, got \(intervalSeconds)") }
        if timeoutSeconds < 1 || timeoutSeconds > intervalSeconds { return bad("timeout_seconds", "must be 1 to interval_seconds (\(intervalSeconds)), got \(timeoutSeconds)") }
        if tolerance < 1 { return bad("tolerance", "must be at least 1, got \(tolerance)") }
        if recover < 1 { return bad("recover", "must be at least 1, got \(recover)") }
        if let handler {
            if !handler.hasPrefix("/") { return bad("handler", "must be an absolute path, got \"\(handler)\"") }
            var info = stat()
            let file = stat(handler, &info) == 0 && info.st_mode & S_IFMT == S_IFREG
            if !file || access(handler, X_OK) != 0 { return bad("handler", "\(handler) is not an executable file") }
        }
        if handlerTimeoutSeconds < 1 { return bad("handler_timeout_seconds", "must be at least 1, got \(handlerTimeoutSeconds)") }
        return nil
    }
}

/// How the detector reads this server's BMC over Redfish (`"detector": {"redfish": {...}}`):
/// read-only GETs under `/redfish/v1`, every `poll_seconds`.
public struct DetectorRedfishConfig: Codable, Sendable, Equatable {
    /// The BMC's base URL, without `/redfish/v1`: `https://10.0.0.5` or `https://bmc1:8443`.
    public var url = ""
    /// PEM file of the CA (or the BMC's own self-signed certificate) the BMC's certificate
    /// must chain to; the system's trust store when absent.
    public var caFile: String?
    /// Accept any certificate (and plain `http://`): for a lab only; logged loudly at start.
    public var insecure = false
    /// File whose first line is `user:password` (the password may contain `:`).
    public var credentialsFile = ""
    /// `session` (log in at `/redfish/v1/SessionService/Sessions`, send `X-Auth-Token`,
    /// log in again when it expires: what real BMCs want) or `basic` (HTTP basic on every
    /// request).
    public var auth = "session"
    /// Read the BMC this often.
    public var pollSeconds = 60
    /// Deadline of one request (connect and answer).
    public var timeoutSeconds = 10
    /// A drive with this much predicted media life left or less (percent) is a warning.
    public var lifeLeftWarningPercent = 10

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "detector.redfish." + field, problem: text)) }
        if url.isEmpty {
            problem("url", "is required (the BMC's base URL, https://HOST[:PORT])")
        } else if url.hasPrefix("http://") {
            if !insecure { problem("url", "must be https:// (plain http:// only with insecure: true), got \(url)") }
        } else if !url.hasPrefix("https://") {
            problem("url", "must start with https://, got \(url)")
        } else if url.dropFirst("https://".count).isEmpty || url.contains("/redfish/") {
            problem("url", "must be the BMC's base URL without /redfish/v1, got \(url)")
        }
        if let caFile {
            if insecure { problem("ca_file", "set either ca_file or insecure, not both") }
            if let reason = unreadable(caFile) { problem("ca_file", reason) }
        }
        if credentialsFile.isEmpty {
            problem("credentials_file", "is required (a file whose first line is user:password)")
        } else if let reason = unreadable(credentialsFile) {
            problem("credentials_file", reason)
        } else if !Self.firstLineIsUserColonPassword(credentialsFile) {
            problem("credentials_file", "the first line of \(credentialsFile) must be user:password")
        }
        if auth != "session" && auth != "basic" { problem("auth", "must be session or basic, got \(auth)") }
        if pollSeconds < 1 { problem("poll_seconds", "must be at least 1, got \(pollSeconds)") }
        if timeoutSeconds < 1 { problem("timeout_seconds", "must be at least 1, got \(timeoutSeconds)") }
        if !(0...100).contains(lifeLeftWarningPercent) { problem("life_left_warning_percent", "must be 0 to 100, got \(lifeLeftWarningPercent)") }
        return problems
    }

    /// Whether the file's first line has a user before a `:` (the secret itself is not kept).
    static func firstLineIsUserColonPassword(_ path: String) -> Bool {
        guard let file = fopen(path, "r") else { return false }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 4096)
        guard fgets(&line, Int32(line.count), file) != nil else { return false }
        let first = line.prefix { $0 != 0 }
        guard let colon = first.firstIndex(of: CChar(UInt8(ascii: ":"))) else { return false }
        return colon > 0
    }
}

/// How the detector watches ZFS pools (`"detector": {"zfs": {...}}`): `zpool status` and
/// `zpool list`, read-only.
public struct DetectorZFSConfig: Codable, Sendable, Equatable {
    /// `zpool`: a path, or a name looked up on PATH.
    public var zpoolPath = "zpool"
    /// Ask zpool this often.
    public var pollSeconds = 60
    /// A pool this full or fuller (percent used) is reported (bzman's rule: 75).
    public var capacityAlarmPercent = 75
    /// A pool whose last finished scrub is older than this (or that was never scrubbed) is
    /// reported; 0 turns the check off.
    public var scrubMaxAgeDays = 35

    public init() {}
}

/// How the detector reads a Ceph cluster's view (`"detector": {"ceph": {...}}`): read-only
/// mon commands (`osd dump`, `osd metadata`, `health detail`), so a `profile crash`-like
/// read-only cephx identity (`mon 'allow r'`) is enough.
public struct DetectorCephConfig: Codable, Sendable, Equatable {
    public var configFile = "/etc/ceph/ceph.conf"
    public var clientName = "client.admin"
    /// The host name Ceph records for this host's OSDs (`ceph osd metadata` "hostname");
    /// default the machine's host name.
    public var osdHostname: String?
    /// Ask the cluster this often (and at once after a kernel error).
    public var pollSeconds = 10
    /// A name for the cluster in tickets and messages ("ceph-prod-east"); default its fsid.
    public var clusterName: String?

    public init() {}
}
