#if canImport(Glibc)
import Glibc
#endif

/// The orchestrator's section of the host config (`"orchestrator": {...}`).
///
/// ```json
/// "orchestrator": {
///   "signing_key_file": "/etc/bynar/orchestrator.key",
///   "operator_keys_file": "/etc/bynar/operator-keys",
///   "dry_run": false,
///   "brake": {"max_out_per_cluster": 2, "max_out_per_rack": 1, "max_out_per_host": 1,
///             "removals_per_hour": 6, "removal_burst": 2, "allow_removal_when_health_err": false},
///   "hosts": [{"host": "stor1", "rack": "r1", "cluster": "ceph", "address": "10.0.0.11"}],
///   "steps": {"remove": {"timeout_seconds": 900, "retries": 2}},
///   "hooks": [{"command": "/etc/bynar/hooks/handler", "timeout_seconds": 30}]
/// }
/// ```
public struct OrchestratorConfig: Codable, Sendable, Equatable {
    /// Private key (from `bynar keys generate`) that signs disk-manager commands. Without it
    /// the orchestrator only decides and reports: every step that needs the disk-manager
    /// fails with "no signing key" and the incident ends STUCK.
    public var signingKeyFile: String?
    /// Trusted-keys file (the disk-manager's format: `KEY_ID ed25519 BASE64` per line) of the
    /// operators whose signed commands the orchestrator takes (`bynar incidents
    /// retry|cancel|resolve|show`, `bynar maintenance`). Without it every operator command is
    /// refused (and audited).
    public var operatorKeysFile: String?
    /// A STUCK incident is announced to people again every this many seconds while it stays
    /// stuck (0: only once).
    public var reannounceStuckSeconds = 14_400
    /// An incident waiting (queued, for a technician, for the new disk) is announced again
    /// every this many seconds while it waits (0: never).
    public var reannounceWaitingSeconds = 86_400
    /// Decide and report, change nothing: SafeToRemove (read-only) is asked, Remove and Add
    /// are sent with `simulate`, no ticket is opened; notifications say "dry run: would …".
    public var dryRun = false
    public var brake = BrakeConfig()
    /// Where each host sits (rack, cluster) and its address for hooks. Hosts not listed are
    /// in rack "" (their own failure domain is the host) and cluster `default_cluster`.
    public var hosts: [HostPlacement] = []
    public var defaultCluster = "default"
    public var steps = StepsConfig()
    /// How long to wait for the disk-manager's answer to one request.
    public var requestTimeoutSeconds = 30
    /// A queued incident asks again whether it may go this often (and at once when a disk
    /// comes back in).
    public var queueRecheckSeconds = 30
    /// A ticket comment or close is sent again this often until bynar-ticketing answers
    /// it (a ticketing killed as it took one would otherwise lose it; see docs/bus.md).
    public var ticketReceiptSeconds = 300
    /// A disk the detector reports MISSING (gone from its slot: the commonest death) for this
    /// long is repaired like a failed one; back within it, nothing happens. 0: at once.
    public var missingGraceSeconds = 300
    /// A failed server part (a hardware incident, from the hosts' BMCs) that its BMC reports
    /// healthy for this long closes its incident and its ticket; one that fails again within
    /// it keeps the same incident and ticket (a flapping part files one ticket). 0: at once.
    public var hardwareHealthySeconds = 300
    /// Scripts run on a host or service going up or down: `COMMAND <app> <ip> <up|down>`.
    public var hooks: [HookConfig] = []
    /// Shared-subscription group the orchestrators share hook events through (each live
    /// birth/death goes to one member).
    public var hookGroup = "orchestrator-hooks"
    /// At most this many hook events run per minute on this orchestrator; beyond, events
    /// are logged, counted and reported, not run (a flapping or forged host must not fork
    /// hundreds of scripts).
    public var hookLimit = HookLimit()
    /// At most this many disks remembered per host, and this many hosts: a host whose
    /// detector invents disks cannot grow the orchestrator without bound.
    public var maxDisksPerHost = 512
    public var maxHosts = 20_000
    /// At most this many open incidents are held whole in memory (the ones used last); the
    /// others are in the journal and read back when something happens to them. Every open
    /// incident also keeps a small entry in memory (docs/orchestrator.md, "Memory").
    public var incidentsInMemory = 2_000
    /// Several orchestrators for one cluster, one leading (docs/orchestrator.md, "Several
    /// orchestrators"). Unset: one orchestrator on its local SQLite, nothing else to run.
    public var coordination = Coordination()

    public init() {}

    /// `orchestrator.coordination`: what coordinates several orchestrators (etcd only).
    public struct Coordination: Codable, Sendable, Equatable {
        public var etcd: EtcdConfig?
        public init() {}
    }

    /// `orchestrator.coordination.etcd`: leadership through an etcd lease; the journal and
    /// the outgoing messages in etcd, every write a transaction that checks the writer
    /// still leads.
    public struct EtcdConfig: Codable, Sendable, Equatable {
        /// Client URLs of the etcd members (`http://` or `https://`).
        public var endpoints: [String] = []
        /// Where this group's keys live (leader key, journal log).
        public var prefix = "/bynar/orchestrator"
        /// The group's name: the fence group disk-managers remember epochs under, and the
        /// MQTT client id every member connects with (so a new leader takes over the
        /// session and the messages queued for it).
        public var group = "default"
        /// TLS: the CA that signed the etcd members' certificates, and this client's own
        /// certificate and key when the members ask for one.
        public var caFile: String?
        public var certFile: String?
        public var keyFile: String?
        /// The leader's lease: a leader that stopped renewing it is replaced this long after.
        public var leaseTtlSeconds = 10
        /// One etcd call's deadline.
        public var requestTimeoutSeconds = 5
        /// The journal log is folded into a snapshot every this many entries.
        public var snapshotEvery = 5_000

        public init(endpoints: [String] = []) { self.endpoints = endpoints }

        private enum CodingKeys: String, CodingKey {
            case endpoints, prefix, group, caFile, certFile, keyFile, leaseTtlSeconds, requestTimeoutSeconds, snapshotEvery
        }

        /// An optional section is not laid over defaults, so every field but the endpoints may be left out.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = EtcdConfig()
            endpoints = try c.decode([String].self, forKey: .endpoints)
            prefix = try c.decodeIfPresent(String.self, forKey: .prefix) ?? defaults.prefix
            group = try c.decodeIfPresent(String.self, forKey: .group) ?? defaults.group
            caFile = try c.decodeIfPresent(String.self, forKey: .caFile)
            certFile = try c.decodeIfPresent(String.self, forKey: .certFile)
            keyFile = try c.decodeIfPresent(String.self, forKey: .keyFile)
            leaseTtlSeconds = try c.decodeIfPresent(Int.self, forKey: .leaseTtlSeconds) ?? defaults.leaseTtlSeconds
            requestTimeoutSeconds = try c.decodeIfPresent(Int.self, forKey: .requestTimeoutSeconds) ?? defaults.requestTimeoutSeconds
            snapshotEvery = try c.decodeIfPresent(Int.self, forKey: .snapshotEvery) ?? defaults.snapshotEvery
        }

        func validate(_ problem: (String, String) -> Void) {
            if endpoints.isEmpty { problem("endpoints", "must name at least one etcd member (http://HOST:2379)") }
            for (index, endpoint) in endpoints.enumerated() where !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) {
                problem("endpoints.\(index)", "must start with http:// or https://, got \"\(endpoint)\"")
            }
            if !prefix.hasPrefix("/") || prefix.hasSuffix("/") { problem("prefix", "must start with / and not end with one, got \"\(prefix)\"") }
            if let reason = Topic.invalidSegmentReason(group) { problem("group", reason) }
            if (certFile == nil) != (keyFile == nil) { problem(certFile == nil ? "cert_file" : "key_file", "cert_file and key_file go together") }
            for (field, file) in [("ca_file", caFile), ("cert_file", certFile), ("key_file", keyFile)] {
                if let file, let reason = unreadable(file) { problem(field, reason) }
            }
            if leaseTtlSeconds < 2 { problem("lease_ttl_seconds", "must be at least 2, got \(leaseTtlSeconds)") }
            if requestTimeoutSeconds < 1 { problem("request_timeout_seconds", "must be at least 1, got \(requestTimeoutSeconds)") }
            else if requestTimeoutSeconds >= leaseTtlSeconds {
                problem("request_timeout_seconds", "must be below lease_ttl_seconds (\(leaseTtlSeconds)), got \(requestTimeoutSeconds): a leader must notice a lost lease before another takes over")
            }
            if snapshotEvery < 10 { problem("snapshot_every", "must be at least 10, got \(snapshotEvery)") }
        }
    }

    /// Caps on hook events per rolling minute (`orchestrator.hook_limit`).
    public struct HookLimit: Codable, Sendable, Equatable {
        public var perMinute = 120
        public var perHostPerMinute = 12
        public init() {}
    }

    /// Limits on disks out at once and on removals (the cluster brake).
    public struct BrakeConfig: Codable, Sendable, Equatable {
        /// At most this many disks out (removed, not yet added back) per cluster.
        public var maxOutPerCluster = 2
        /// ... per rack (hosts with no rack are not limited by this).
        public var maxOutPerRack = 1
        /// ... per host.
        public var maxOutPerHost = 1
        /// Token bucket: removals start at most this often on average ...
        public var removalsPerHour = 6.0
        /// ... with at most this many back to back.
        public var removalBurst = 2
        /// Remove even while the cluster reports HEALTH_ERR (operators only, knowingly).
        public var allowRemovalWhenHealthErr = false
        public init() {}
    }

    /// One host's place in the failure domains.
    public struct HostPlacement: Codable, Sendable, Equatable {
        public var host: String
        public var rack: String?
        public var cluster: String?
        /// Address handed to hooks as `<ip>`; default: the host name resolved, else the name.
        public var address: String?
        public init(host: String, rack: String? = nil, cluster: String? = nil, address: String? = nil) {
            self.host = host
            self.rack = rack
            self.cluster = cluster
            self.address = address
        }
    }

    /// Per-step timeouts and retries.
    public struct StepsConfig: Codable, Sendable, Equatable {
        public var safeToRemove = StepLimit(timeoutSeconds: 60, retries: 3)
        public var remove = StepLimit(timeoutSeconds: 1800, retries: 2)
        public var openTicket = StepLimit(timeoutSeconds: 300, retries: 5)
        public var add = StepLimit(timeoutSeconds: 1800, retries: 2)
        /// Pause before a retry (times the attempt number).
        public var retryDelaySeconds = 5
        public init() {}
    }

    /// How long one attempt of a step may take, and how many more attempts follow a
    /// failed one before the incident is STUCK.
    public struct StepLimit: Codable, Sendable, Equatable {
        public var timeoutSeconds: Int
        public var retries: Int
        public init(timeoutSeconds: Int, retries: Int) {
            self.timeoutSeconds = timeoutSeconds
            self.retries = retries
        }
    }

    /// One operator hook.
    public struct HookConfig: Codable, Sendable, Equatable {
        /// Executable path (PicoRed's HANDLER); run as `COMMAND <app> <ip> <up|down>`.
        public var command: String
        /// Killed (its whole process group) after this long.
        public var timeoutSeconds = 30
        public init(command: String, timeoutSeconds: Int = 30) {
            self.command = command
            self.timeoutSeconds = timeoutSeconds
        }

        private enum CodingKeys: String, CodingKey { case command, timeoutSeconds }

        /// Array items are not laid over defaults, so `timeout_seconds` may be left out here.
        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            command = try container.decode(String.self, forKey: .command)
            timeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .timeoutSeconds) ?? 30
        }
    }

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "orchestrator." + field, problem: text)) }
        if let file = signingKeyFile, let reason = unreadable(file) { problem("signing_key_file", reason) }
        if let file = operatorKeysFile, let reason = unreadable(file) { problem("operator_keys_file", reason) }
        if reannounceStuckSeconds < 0 { problem("reannounce_stuck_seconds", "must be 0 (off) or more, got \(reannounceStuckSeconds)") }
        if reannounceWaitingSeconds < 0 { problem("reannounce_waiting_seconds", "must be 0 (off) or more, got \(reannounceWaitingSeconds)") }
        if missingGraceSeconds < 0 { problem("missing_grace_seconds", "must be 0 or more, got \(missingGraceSeconds)") }
        if hardwareHealthySeconds < 0 { problem("hardware_healthy_seconds", "must be 0 or more, got \(hardwareHealthySeconds)") }
        if brake.maxOutPerCluster < 1 { problem("brake.max_out_per_cluster", "must be at least 1, got \(brake.maxOutPerCluster)") }
        if brake.maxOutPerRack < 1 { problem("brake.max_out_per_rack", "must be at least 1, got \(brake.maxOutPerRack)") }
        if maxDisksPerHost < 1 { problem("max_disks_per_host", "must be at least 1, got \(maxDisksPerHost)") }
        if maxHosts < 1 { problem("max_hosts", "must be at least 1, got \(maxHosts)") }
        if incidentsInMemory < 1 { problem("incidents_in_memory", "must be at least 1, got \(incidentsInMemory)") }
        if hookLimit.perMinute < 1 { problem("hook_limit.per_minute", "must be at least 1, got \(hookLimit.perMinute)") }
        if hookLimit.perHostPerMinute < 1 { problem("hook_limit.per_host_per_minute", "must be at least 1, got \(hookLimit.perHostPerMinute)") }
        if brake.maxOutPerHost < 1 { problem("brake.max_out_per_host", "must be at least 1, got \(brake.maxOutPerHost)") }
        if !(brake.removalsPerHour > 0) { problem("brake.removals_per_hour", "must be more than 0, got \(brake.removalsPerHour)") }
        if brake.removalBurst < 1 { problem("brake.removal_burst", "must be at least 1, got \(brake.removalBurst)") }
        var seen = Set<String>()
        for (index, placement) in hosts.enumerated() {
            if let reason = Topic.invalidSegmentReason(placement.host) { problem("hosts.\(index).host", reason) }
            if !seen.insert(placement.host).inserted { problem("hosts.\(index).host", "\"\(placement.host)\" is listed twice") }
        }
        if defaultCluster.isEmpty { problem("default_cluster", "must not be empty") }
        let limits = [("safe_to_remove", steps.safeToRemove), ("remove", steps.remove), ("open_ticket", steps.openTicket), ("add", steps.add)]
        for (name, limit) in limits {
            if limit.timeoutSeconds < 1 { problem("steps.\(name).timeout_seconds", "must be at least 1, got \(limit.timeoutSeconds)") }
            if limit.retries < 0 { problem("steps.\(name).retries", "must be 0 or more, got \(limit.retries)") }
        }
        if steps.retryDelaySeconds < 0 { problem("steps.retry_delay_seconds", "must be 0 or more, got \(steps.retryDelaySeconds)") }
        if requestTimeoutSeconds < 1 { problem("request_timeout_seconds", "must be at least 1, got \(requestTimeoutSeconds)") }
        if queueRecheckSeconds < 1 { problem("queue_recheck_seconds", "must be at least 1, got \(queueRecheckSeconds)") }
        if ticketReceiptSeconds < 1 { problem("ticket_receipt_seconds", "must be at least 1, got \(ticketReceiptSeconds)") }
        for (index, hook) in hooks.enumerated() {
            if !hook.command.hasPrefix("/") { problem("hooks.\(index).command", "must be an absolute path, got \"\(hook.command)\"") }
            else if access(hook.command, X_OK) != 0 { problem("hooks.\(index).command", "\(hook.command) is not executable") }
            if hook.timeoutSeconds < 1 { problem("hooks.\(index).timeout_seconds", "must be at least 1, got \(hook.timeoutSeconds)") }
        }
        if let reason = Topic.invalidSegmentReason(hookGroup) { problem("hook_group", reason) }
        coordination.etcd?.validate { problem("coordination.etcd." + $0, $1) }
        return problems
    }
}
