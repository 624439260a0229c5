import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a disk is made to fail (faultfs rules on the whole disk, then a write and sync so
/// the kernel sees errors at once).
enum FailureMode: String, CaseIterable, Sendable {
    case writeErrors = "writes fail"
    case allIO = "every read and write fails"
    case vanished = "vanished (every operation fails)"

    func rule(sectors: Int) -> String {
        switch self {
        case .writeErrors: "fail-writes 0 \(sectors)"
        case .allIO: "fail 0 \(sectors)"
        case .vanished: "vanish EIO"
        }
    }
}

/// One disk slot of a host: the disk deployed at the start, and after a swap its
/// replacement. Each slot fails exactly once.
final class Slot: @unchecked Sendable {
    let host: String
    let name: String
    var disks: [FaultyDisk] = []
    var current: FaultyDisk { disks[disks.count - 1] }
    var mountpoint = ""
    var mode: FailureMode?
    var failedAt: Date?
    var failedKey = ""
    var swappedAt: Date?
    var replacementKey = ""
    var ticketSeenAt: Date?
    var notes: [String] = []

    init(host: String, name: String) {
        self.host = host
        self.name = name
    }
}

/// The broker the run uses and kills: the shipped production configuration (TLS, per-host
/// ACL, persistence saved every 60 s) or the plain test broker (persistence every second).
struct BrokerSetup: @unchecked Sendable {
    let broker: TestBroker
    let production: ProductionBroker?

    func port(storage: Bool) -> Int { storage ? broker.port : (production?.centralPort ?? broker.port) }

    /// The `broker` object's members for a service logging in as `identity`.
    func configJSON(identity: String, storage: Bool) -> String {
        var json = "\"port\": \(port(storage: storage)), \"reconnect_max_seconds\": 1"
        if let production { json += ", " + production.brokerConfigJSON(identity: identity) }
        return json
    }

    func observer() async throws -> Bus {
        if let production {
            return try await production.bus(service: "chaos", host: "central", identity: "admin.ops", clientId: "chaos-observer")
        }
        return try await connectedBus(broker, service: "chaos", host: "central", clientId: "chaos-observer")
    }
}

final class ChaosRun: @unchecked Sendable {
    let options: Options
    let work: String
    let lock = NSLock()
    var random: SeededRandom
    var slots: [Slot] = []
    var services: [ManagedService] = []
    var broker: BrokerSetup?
    var jira: JiraStandIn?
    var slack: SlackStandIn?
    var kills: [String: Int] = [:]
    var brokerRestartFailures: [String] = []
    var stopChaos = false
    var finished = false
    var injectedAll = false
    var lastInjection: Date?
    var cleanedUp = false
    let started = Date()

    init(options: Options, work: String) {
        self.options = options
        self.work = work
        random = SeededRandom(seed: options.seed)
    }

    func say(_ text: String) {
        let seconds = String(format: "%6.1f", Date().timeIntervalSince(started))
        FileHandle.standardError.write(Data("[chaos \(seconds)s] \(text)\n".utf8))
    }

    var hosts: [String] { (1...options.hosts).map { "h\($0)" } }

    // MARK: - Set-up

    func setUp() async throws -> Bus {
        let hostNames = hosts
        say("work directory \(work)")
        if options.broker == "production" {
            let production = try ProductionBroker(hosts: hostNames + ["central"])
            broker = BrokerSetup(broker: production.broker, production: production)
        } else {
            broker = BrokerSetup(broker: try TestBroker(extraConfig: "", persistence: true), production: nil)
        }
        guard let broker else { throw TestSupportError("no broker") }
        say("mosquitto (\(options.broker) configuration) on 127.0.0.1:\(broker.broker.port)")
        jira = try JiraStandIn()
        slack = try SlackStandIn()
        let keyFiles = try KeyFiles.generate(keyID: "chaos-operator")
        let keyPath = work + "/operator.key"
        try keyFiles.privateKeyFileText.write(toFile: keyPath, atomically: true, encoding: .utf8)
        chmod(keyPath, 0o600)
        try keyFiles.trustedKeysLine.write(toFile: work + "/trusted-keys", atomically: true, encoding: .utf8)

        // The disks: one slot per failure, spread over the hosts.
        for index in 0..<options.disks {
            let host = hostNames[index % hostNames.count]
            let slot = Slot(host: host, name: String(format: "s%02d", index / hostNames.count + 1))
            let disk = try FaultyDisk(sizeMB: options.diskMB, directory: "\(work)/\(host)/\(slot.name)-g1")
            slot.disks.append(disk)
            lock.withLock { slots.append(slot) }
        }
        say("\(options.disks) faultfs loop disks attached over \(hostNames.count) hosts")

        let observer = try await broker.observer()
        // Per host: a disk-manager (filesystem backend, its own mount root and fstab, only its
        // own disks) and a detector (only its own disks as repair candidates).
        for host in hostNames {
            let root = "\(work)/\(host)"
            try FileManager.default.createDirectory(atPath: root + "/srv", withIntermediateDirectories: true)
            try "# chaos \(host) fstab\n".write(toFile: root + "/fstab", atomically: true, encoding: .utf8)
            let perHost = (options.disks + hostNames.count - 1) / hostNames.count
            services.append(try ManagedService(name: "disk-manager.\(host)", executable: "bynar-disk-manager", directory: root + "/dm", config: config(
                host: host, directory: root + "/dm", identity: "disk-manager.\(host)", storage: true, extra: """
                "disk_manager": {"trusted_keys_file": "\(work)/trusted-keys", "max_disks_out": \(perHost), "manage_only": ["\(root)/*"],
                  "filesystem": {"mount_root": "\(root)/srv", "fstab": "\(root)/fstab", "filesystem": "ext4",
                                 "mount_options": "defaults,noatime,nofail,errors=remount-ro"}}
                """)))
            services.append(try ManagedService(name: "detector.\(host)", executable: "bynar-detector", directory: root + "/det", config: config(
                host: host, directory: root + "/det", identity: "detector.\(host)", storage: true, extra: """
                "detector": {"check_interval_seconds": 2, "probe_timeout_seconds": 5, "fsck_interval_seconds": 0, "watch_only": ["\(root)/*"]}
                """)))
        }
        let central = work + "/central"
        services.append(try ManagedService(name: "orchestrator", executable: "bynar-orchestrator", directory: central + "/orc", config: config(
            host: "central", directory: central + "/orc", identity: "orchestrator", storage: false, extra: """
            "orchestrator": {"signing_key_file": "\(keyPath)", "request_timeout_seconds": 10, "queue_recheck_seconds": 2,
              "missing_grace_seconds": 5,
              "brake": {"max_out_per_cluster": \(options.disks), "max_out_per_rack": \(options.disks), "max_out_per_host": \(options.disks),
                        "removals_per_hour": 100000, "removal_burst": \(options.disks)},
              "steps": {"safe_to_remove": {"timeout_seconds": 30, "retries": 5}, "remove": {"timeout_seconds": 120, "retries": 3},
                        "open_ticket": {"timeout_seconds": 60, "retries": 5}, "add": {"timeout_seconds": 120, "retries": 3},
                        "retry_delay_seconds": 2}}
            """)))
        services.append(try ManagedService(name: "ticketing", executable: "bynar-ticketing", directory: central + "/tic", config: config(
            host: "central", directory: central + "/tic", identity: "ticketing", storage: false, extra: """
            "ticketing": {"jira": {"base_url": "\(jira!.baseURL)", "project_key": "BYN", "issue_type_id": "3", "priority_id": "2",
                                   "user": "bynar-bot", "api_token": "api-token-1"},
                          "request_timeout_seconds": 5, "retry_min_seconds": 1, "retry_max_seconds": 2,
                          "follow": {"first_check_seconds": 1, "backoff_factor": 1.0, "max_interval_seconds": 2}}
            """)))
        services.append(try ManagedService(name: "notifier", executable: "bynar-notifier", directory: central + "/ntf", config: config(
            host: "central", directory: central + "/ntf", identity: "notifier", storage: false, extra: """
            "notifier": {"slack": {"webhook_url": "\(slack!.webhookURL)"}}
            """)))
        return observer
    }

    func config(host: String, directory: String, identity: String, storage: Bool, extra: String) -> String {
        """
        {"host": "\(host)", "db_location": "\(directory)/db", "log_level": "info",
         "broker": {\(broker!.configJSON(identity: identity, storage: storage))},
         "metrics": {"enabled": false},
         \(extra)}
        """
    }

    func service(_ name: String) -> ManagedService? { services.first { $0.name == name } }

    // MARK: - Chaos

    /// Every few seconds one random service, or the broker, is killed with SIGKILL and
    /// restarted; a service that exits on its own is restarted too (and counted).
    func chaosLoop() async {
        var targets = services.map(\.name)
        if options.killBroker { targets.append("broker") }
        if !options.killOnly.isEmpty { targets = targets.filter { options.killOnly.contains($0) } }
        var nextKill = Date().addingTimeInterval(options.killEvery)
        while !lock.withLock({ stopChaos }) {
            try? await Task.sleep(for: .milliseconds(250))
            restartExited()
            guard !targets.isEmpty, Date() >= nextKill else { continue }
            let target = lock.withLock { targets.randomElement(using: &random)! }
            let jitter = lock.withLock { Double.random(in: 0.8...1.2, using: &random) }
            nextKill = Date().addingTimeInterval(options.killEvery * jitter)
            lock.withLock { kills[target, default: 0] += 1 }
            say("kill -9 \(target)")
            if target == "broker", let broker {
                broker.broker.signal(SIGKILL)
                try? await Task.sleep(for: .seconds(options.restartDelay))
                restartBroker(broker)
            } else if let victim = service(target) {
                victim.kill9()
                try? await Task.sleep(for: .seconds(options.restartDelay))
                do { try victim.start() } catch { say("cannot restart \(target): \(error)") }
            }
        }
    }

    func restartBroker(_ broker: BrokerSetup) {
        for attempt in 1...5 {
            do {
                try broker.broker.start()
                return
            } catch {
                lock.withLock { brokerRestartFailures.append("attempt \(attempt): \(error)") }
                usleep(500_000)
            }
        }
        say("the broker did not come back after 5 attempts")
    }

    func restartExited() {
        for service in services where service.reapIfExited() {
            say("\(service.name) exited on its own; restarting it")
            try? service.start()
        }
    }

    // MARK: - Failures

    /// Fails every slot once, one every `fail_every` seconds, in a seeded random order,
    /// cycling through the failure modes.
    func failureLoop() async {
        let order = lock.withLock { slots.shuffled(using: &random) }
        for (index, slot) in order.enumerated() {
            try? await Task.sleep(for: .seconds(options.failEvery))
            if lock.withLock({ finished }) { return }
            let mode = FailureMode.allCases[index % FailureMode.allCases.count]
            let disk = slot.current
            let mountpoint = slot.mountpoint
            do {
                try disk.control(mode.rule(sectors: options.diskMB * 2048))
            } catch {
                lock.withLock { slot.notes.append("could not inject: \(error)") }
                continue
            }
            lock.withLock {
                slot.mode = mode
                slot.failedAt = Date()
                slot.failedKey = disk.key
                lastInjection = Date()
            }
            say("disk \(slot.host)/\(slot.name) (\(disk.device)) fails: \(mode.rawValue)")
            // A write and a sync, so the kernel meets the errors now rather than at the next probe.
            Task.detached {
                try? "chaos \(index)".write(toFile: "\(mountpoint)/chaos-\(index)", atomically: false, encoding: .utf8)
                _ = try? FaultyDisk.run("/bin/sync", ["-f", mountpoint], timeout: .seconds(30))
            }
        }
        lock.withLock { injectedAll = true }
    }

    // MARK: - The technician

    /// Reads the (stand-in) JIRA every second like a technician's queue: for a ticket of a
    /// failed disk that is out of service, pulls the disk, puts a blank one in the same slot
    /// (the same loop device), and resolves the ticket. Tickets of disks already swapped are
    /// resolved too.
    func technicianLoop() async {
        guard let jira else { return }
        while !lock.withLock({ finished }) {
            try? await Task.sleep(for: .seconds(1))
            guard let issues = try? jira.issues() else { continue }
            for issue in issues where !issue.deleted {
                let slot = lock.withLock { slots.first { slot in !slot.failedKey.isEmpty && issue.labels.contains { $0.contains(slot.failedKey) } } }
                guard let slot else { continue }
                lock.withLock { if slot.ticketSeenAt == nil { slot.ticketSeenAt = Date() } }
                if lock.withLock({ slot.swappedAt == nil }) {
                    guard swap(slot) else { continue }
                }
                if !issue.resolved {
                    do { try jira.resolve(issue.key) } catch { say("cannot resolve \(issue.key): \(error)") }
                    say("technician resolved \(issue.key) (\(slot.host)/\(slot.name))")
                }
            }
        }
    }

    /// Pulls the failed disk and puts a blank one under the same /dev name. False when the
    /// disk is still mounted (not out of service yet: a ticket should not exist then).
    func swap(_ slot: Slot) -> Bool {
        let old = slot.current
        let mounted = FaultyDisk.mountpoints(of: old.device)
        if !mounted.isEmpty {
            let waited = Date().timeIntervalSince(lock.withLock { slot.ticketSeenAt ?? Date() })
            if waited > 60 { lock.withLock { if !slot.notes.contains(where: { $0.hasPrefix("ticketed") }) { slot.notes.append("ticketed while still mounted at \(mounted)") } } }
            return false
        }
        try? old.control("vanish ENODEV")
        do { try old.detach() } catch {
            lock.withLock { slot.notes.append("technician could not pull \(old.device): \(error)") }
            return false
        }
        let generation = slot.disks.count + 1
        var replacement: FaultyDisk?
        for attempt in 1...10 {
            let directory = "\(work)/\(slot.host)/\(slot.name)-g\(generation)" + (attempt == 1 ? "" : "-try\(attempt)")
            replacement = try? FaultyDisk(sizeMB: options.diskMB, loopDevice: old.device, directory: directory)
            if replacement != nil { break }
            usleep(200_000)
        }
        if replacement == nil {
            // Someone else took the /dev name in between: a new one, as a disk in another bay.
            replacement = try? FaultyDisk(sizeMB: options.diskMB, directory: "\(work)/\(slot.host)/\(slot.name)-g\(generation)b")
            lock.withLock { slot.notes.append("\(old.device) was taken; replacement under \(replacement?.device ?? "nothing")") }
        }
        old.teardown()
        guard let replacement else {
            lock.withLock { slot.notes.append("technician could not attach a replacement") }
            return false
        }
        lock.withLock {
            slot.disks.append(replacement)
            slot.swappedAt = Date()
            slot.replacementKey = replacement.key
        }
        say("technician swapped \(slot.host)/\(slot.name): new blank disk on \(replacement.device)")
        return true
    }

    // MARK: - Clean-up

    /// Stops every process this run started (by pid), unmounts what is mounted under the
    /// work directory, detaches this run's loop devices by name, unmounts faultfs.
    func cleanUp() {
        let first = lock.withLock { () -> Bool in defer { cleanedUp = true }; return !cleanedUp }
        guard first else { return }
        lock.withLock { finished = true; stopChaos = true }
        for service in services { service.stop(timeout: .seconds(10)) }
        let mountinfo = readProcFile("/proc/self/mountinfo") ?? ""
        let ours = mountinfo.split(separator: "\n").compactMap { line -> (String, String)? in
            let fields = line.split(separator: " ")
            guard fields.count > 8, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else { return nil }
            let point = String(fields[4])
            return point.hasPrefix(work + "/") ? (point, String(fields[dash + 1])) : nil
        }
        // Filesystems the disk-managers mounted first (deepest first), faultfs after the loops.
        for (point, type) in ours.sorted(by: { $0.0.count > $1.0.count }) where !type.hasPrefix("fuse") {
            _ = try? FaultyDisk.run("/bin/umount", ["-l", point])
        }
        for slot in slots { for disk in slot.disks { disk.teardown() } }
        // Whatever FUSE mount is still under the work directory (a disk that never came up).
        let left = (readProcFile("/proc/self/mountinfo") ?? "").split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            return fields.count > 4 && fields[4].hasPrefix(work + "/") ? String(fields[4]) : nil
        }
        for point in left { _ = try? FaultyDisk.run("/bin/fusermount3", ["-u", point]) }
        jira?.stop()
        slack?.stop()
        broker?.broker.stop()
        // The broker's scratch directory goes with it: keep its log with the services' logs.
        if let directory = broker?.broker.directory {
            try? FileManager.default.copyItem(atPath: directory + "/mosquitto.log", toPath: work + "/mosquitto.log")
        }
    }
}
