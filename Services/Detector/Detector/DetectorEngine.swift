import BynarCeph
import BynarConfig
import BynarProto
import BynarDisks
import BynarProcess
import BynarBus
import BynarRuntime
import BynarStore
import GRDB
import Logging
import Metrics
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

/// The detector's shell around its per-slot state machines: it feeds them facts (the
/// inventory, kernel errors, checks) and performs what they ask (announce through the
/// outbox, refresh the retained health, persist, re-check). It never changes a disk.
actor DetectorEngine {
    struct Slot {
        var machine: DiskHealthMachine
        var device: BlockDevice?
        var identity: Bynar_V1_DiskIdentity
        /// Mountpoints seen read-write, so a later read-only one is a remount.
        var seenReadWrite: Set<String> = []
        var lastSmart: SmartReading?
        var lastSmartAtMs: Int64 = 0
        var smart: Bynar_V1_SmartSummary?
        var filesystems: [Bynar_V1_FilesystemFinding] = []
        var checkedAtMs: Int64 = 0
        var fsckFinding: DiskHealthMachine.Reason?
        var lastFsckAtMs: Int64 = 0
        /// Since when every check found the disk unused (nothing mounted); nil when in use.
        var unusedSinceMs: Int64?
        /// What the watched Ceph cluster says about the OSD on this disk.
        var ceph: DiskHealthMachine.CephFacts?
        /// The disk's BlueStore label as last read while it could be read: a dying disk's
        /// OSD is still known by its label.
        var cephLabel: BluestoreLabel?
        /// What the host's ZFS pools say about this disk (``ZFSRules``): durable evidence,
        /// the pool named in each reason; empty when it is no vdev or a healthy one.
        var zfs: [DiskHealthMachine.Reason] = []
        /// What the BMC says about this disk's drive (Redfish, matched by serial): durable
        /// evidence; empty when the BMC does not list it or finds nothing wrong.
        var redfish: [DiskHealthMachine.Reason] = []
        /// "ceph osd.4 (cluster east)", "zfs pool tank (vdev sdc)", for tickets.
        var inUseBy = ""
        /// When (kernel log clock) this device first showed under its kernel name: an error
        /// the kernel logged before then was about whatever had the name before (a lazily
        /// unmounted old disk's writeback, a probe of the disk just pulled).
        var sinceKernelMicros: UInt64 = 0
        /// Whether the disk held a system mount when last seen: a system disk that drops off
        /// the host stays a system disk in its health (never a repair candidate).
        var wasSystemDisk = false
    }

    let context: ServiceContext
    let config: DetectorConfig
    private var slots: [String: Slot] = [:]
    private let probe = WriteProbe()
    private var checking: Set<String> = []
    private var pendingChecks: Set<String> = []
    /// Poked on every kernel disk error, so the Ceph watcher asks the cluster at once.
    let cephPoke = WakeSignal()
    /// The same for the ZFS watcher.
    let zfsPoke = WakeSignal()
    private var logger: Logger { context.logger }

    init(context: ServiceContext) {
        self.context = context
        self.config = context.config.detector
    }

    static let migrations: [LocalStore.Migration] = [
        .init("detector-v1: slots and SMART samples") { db in
            try db.create(table: "detector_slot") { table in
                table.primaryKey("slot", .text)
                table.column("machine", .text).notNull()
                table.column("identity", .blob).notNull()
                table.column("seen_read_write", .text).notNull().defaults(to: "[]")
                table.column("updated_unix_ms", .integer).notNull()
            }
            try db.create(table: "smart_sample") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("disk_key", .text).notNull().indexed()
                table.column("taken_unix_ms", .integer).notNull()
                table.column("reading", .text).notNull()
            }
        },
        .init("detector-v2: cleared health topics") { db in
            // The retained health this detector cleared (a disk that left its slot): cleared
            // again after every reconnect for a day, because a broker that crashes comes
            // back with the retained messages of its last save (`autosave_interval`) and
            // would revive the old disk's MISSING (found by scripts/chaos).
            try db.create(table: "detector_cleared_health") { table in
                table.primaryKey("disk_key", .text)
                table.column("cleared_unix_ms", .integer).notNull()
            }
        },
        .init("detector-v3: the outbox's retained ledger clears again") { db in
            // Every service's outbox now says its retained messages (clears too) again after
            // a reconnect (the store's retained_ledger): this table has no reader left.
            try db.drop(table: "detector_cleared_health")
        },
    ]

    // MARK: Start-up

    /// Loads the machines saved by the previous run (so nothing is announced twice).
    func restore() throws {
        let rows = try context.store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT slot, machine, identity, seen_read_write FROM detector_slot")
        }
        for row in rows {
            let slot: String = row["slot"]
            let machineJSON: String = row["machine"]
            let identityBytes: Data = row["identity"]
            let seenJSON: String = row["seen_read_write"]
            do {
                let machine = try JSONDecoder().decode(DiskHealthMachine.self, from: Data(machineJSON.utf8))
                let identity = try Bynar_V1_DiskIdentity(serializedBytes: [UInt8](identityBytes))
                var record = Slot(machine: machine, identity: identity)
                record.seenReadWrite = Set((try? JSONDecoder().decode([String].self, from: Data(seenJSON.utf8))) ?? [])
                record.lastSmart = try lastSample(key: identity.key)
                slots[slot] = record
            } catch {
                logger.error("cannot restore slot; it starts fresh", metadata: ["slot": "\(slot)", "error": "\(error)"])
            }
        }
        logger.info("restored disk states", metadata: ["slots": "\(slots.count)"])
        recordDiskStates()
    }

    // MARK: Facts in

    /// Compares a fresh inventory with what the slots hold: new disks appear, gone ones
    /// vanish, different ones in a known slot are replacements (each machine asks for the
    /// check it needs).
    func reconcile(_ devices: [BlockDevice], nowMs: Int64) async {
        var present: Set<String> = []
        let keyBySlot = Dictionary(devices.map { (Self.slotID(of: $0), $0.identity.key) }, uniquingKeysWith: { first, _ in first })
        for device in devices {
            let id = Self.slotID(of: device)
            present.insert(id)
            let target = slots[id]
            if target == nil || target?.machine.state == .missing || target?.machine.state == .unknown,
               target?.machine.key != device.identity.key,
               let moved = slots.first(where: { $0.key != id && $0.value.machine.key == device.identity.key && keyBySlot[$0.key] != device.identity.key })?.key {
                // A disk we know showed up under another slot name (moved, or the kernel
                // renumbered it during a swap): it keeps its history and its verdict, and is
                // not judged from scratch as a new disk.
                logger.notice("disk moved slots", metadata: ["disk": "\(device.identity.key)", "from": "\(moved)", "to": "\(id)"])
                var record = slots.removeValue(forKey: moved)!
                record.device = device
                record.sinceKernelMicros = KernelLog.nowMicros()
                record.identity = device.identity
                slots[id] = record
                do {
                    // The move is one change: the old slot's row goes as the new one's is written.
                    let row = try slotRow(id)
                    try context.outbox.commit([]) { db in
                        try db.execute(sql: "DELETE FROM detector_slot WHERE slot = ?", arguments: [moved])
                        if let row { try Self.write(row, db) }
                    }
                } catch {
                    logger.error("cannot save a disk's move", metadata: ["from": "\(moved)", "to": "\(id)", "error": "\(error)"])
                }
                if record.machine.state == .missing {
                    await perform(id) { $0.handle(.appeared(key: device.identity.key, atMs: nowMs)) }
                }
                continue
            }
            var slot = slots[id] ?? Slot(machine: DiskHealthMachine(), identity: device.identity)
            let isNew = slots[id] == nil || slot.machine.key != device.identity.key || slot.machine.state == .missing
            if isNew || slot.device == nil { slot.sinceKernelMicros = KernelLog.nowMicros() }
            let previousKey = slots[id] == nil ? "" : slot.identity.key
            slot.device = device
            slot.wasSystemDisk = device.isSystemDisk
            slot.identity = device.identity  // the slot holds this disk now (a replacement names the new one)
            if !previousKey.isEmpty, previousKey != device.identity.key {
                // What the pools and the BMC said was about the disk that had this slot (a new
                // disk in a failed vdev's slot has its name, not its state): dropped, and the
                // pools asked again; the BMC's next read matches drives by serial anew.
                if !slot.zfs.isEmpty || slot.inUseBy.hasPrefix("zfs ") { zfsPoke.signal() }
                slot.zfs = []
                slot.redfish = []
                if slot.inUseBy.hasPrefix("zfs ") { slot.inUseBy = "" }
            }
            slots[id] = slot
            if isNew || slot.machine.state == .unknown {
                await perform(id) { $0.handle(.appeared(key: device.identity.key, atMs: nowMs)) }
            }
            if !previousKey.isEmpty, previousKey != device.identity.key, !devices.contains(where: { $0.identity.key == previousKey }) {
                // The disk that was in this slot has left the host: its retained health (last
                // MISSING or FAILED) must not outlive it, or every subscriber that starts later
                // (an orchestrator restarting) reads a failure that was already repaired.
                do {
                    // (Cleared again after every reconnect for a day: the outbox's retained ledger.)
                    try context.outbox.commit([.clearRetained(Topics.diskHealth(host: context.host, disk: previousKey))])
                } catch {
                    logger.error("cannot clear the old disk's health", metadata: ["disk": "\(previousKey)", "error": "\(error)"])
                }
            }
        }
        for (id, slot) in slots where !present.contains(id) && slot.machine.state != .missing {
            slots[id]?.device = nil
            await perform(id) { $0.handle(.vanished(atMs: nowMs)) }
        }
    }

    /// A kernel error for a device: escalates that disk's state at once and re-checks it.
    func kernelError(_ error: KernelDiskError, nowMs: Int64) async {
        let disk = KernelLog.wholeDisk(of: error.device)
        guard let id = slots.first(where: { $0.value.device.map { Self.kernelName(of: $0) } == disk })?.key else {
            logger.debug("kernel error for a device we do not watch", metadata: ["device": "\(error.device)"])
            return
        }
        if error.kernelMicros > 0, let since = slots[id]?.sinceKernelMicros, error.kernelMicros < since {
            logger.info("kernel error from before this disk had its name; not held against it", metadata: ["device": "\(error.device)", "line": "\(error.line)"])
            return
        }
        logger.warning("kernel reports a disk error", metadata: ["device": "\(error.device)", "line": "\(error.line)"])
        cephPoke.signal()
        zfsPoke.signal()
        await perform(id) { $0.handle(.kernelIOError(detail: error.line, atMs: nowMs)) }
    }

    /// A full check of one disk: SMART (when due or `forceSmart`), mounted filesystems and
    /// the write probe, and for a disk no cluster uses a read-only fsck (when due); the
    /// verdict goes into the disk's machine. Checks of one slot never overlap: a re-check
    /// asked for while one runs is done once, right after it.
    func check(_ id: String, forceSmart: Bool = false) async {
        guard slots[id]?.device != nil else { return }
        if checking.contains(id) {
            pendingChecks.insert(id)
            return
        }
        checking.insert(id)
        defer { checking.remove(id) }
        var force = forceSmart
        repeat {
            pendingChecks.remove(id)
            await Timer(label: "bynar_detector_check_duration_seconds").measure { await checkOnce(id, forceSmart: force) }
            force = true
        } while pendingChecks.contains(id)
    }

    private func checkOnce(_ id: String, forceSmart: Bool) async {
        guard let start = slots[id], let device = start.device else { return }
        let nowMs = Bus.nowUnixMs()
        var durable: [DiskHealthMachine.Reason] = []

        // SMART, where the disk has it (not for loop or virtual devices), off the actor:
        // smartctl may take seconds on a sick disk.
        if Self.hasSmart(device) && (forceSmart || nowMs - start.lastSmartAtMs >= Int64(config.smartIntervalSeconds) * 1000) {
            let smartctl = config.smartctlPath
            let read: Result<SmartReading, SmartError>? = try? await offThread { Self.readSmart(device, smartctlPath: smartctl) }
            switch read ?? .failure(SmartError(path: device.identity.devPath, operation: "read", kind: .system(errno: 11), reason: "no thread to read SMART on")) {
            case .success(let reading):
                let verdict = SmartRules.judge(current: reading, previous: slots[id]?.lastSmart)
                durable += verdict.reasons.map(Self.reason)
                slots[id]?.smart = reading.summary()
                slots[id]?.lastSmart = reading
                slots[id]?.lastSmartAtMs = nowMs
                saveSample(key: device.identity.key, reading: reading, atMs: nowMs)
            case .failure(let error):
                logger.warning("cannot read SMART", metadata: ["disk": "\(device.identity.devPath)", "error": "\(error)"])
            }
        } else if let last = start.lastSmart {
            durable += SmartRules.judge(current: last, previous: nil).reasons.map(Self.reason)
        }

        // Mounted filesystems on this disk (whole disk or partitions).
        let partitions = device.identity.partitions.map(\.devPath).filter { $0 != device.identity.devPath }
        let allMounts = MountTable.current()
        let mounts = Self.mounts(of: device, in: allMounts)
        var findings: [Bynar_V1_FilesystemFinding] = []
        var probeFailure: DiskHealthMachine.Reason?
        for mount in mounts {
            if !mount.isReadOnly && !mount.isEmergencyReadOnly { slots[id]?.seenReadWrite.insert(mount.mountpoint) }
            let reasons = FilesystemChecks.inspect(mount, wasReadWrite: slots[id]?.seenReadWrite.contains(mount.mountpoint) ?? false)
            durable += reasons
            findings += reasons.map { Self.finding(mount, $0) }
            if config.probe && !mount.isReadOnly && !mount.isEmergencyReadOnly,
               let failure = await probe.run(mountpoint: mount.mountpoint, timeout: .seconds(config.probeTimeoutSeconds)) {
                probeFailure = probeFailure ?? failure
                findings.append(Self.finding(mount, failure))
            }
        }

        // The whole device, read-only at a few places: a disk with no filesystem to probe
        // (an OSD's) that cannot be read at all is dead; some unreadable places are bad sectors.
        if config.readProbe && !device.isSystemDisk {
            let read = await probe.read(device: device.identity.devPath, timeout: .seconds(config.probeTimeoutSeconds))
            if let errors = read.readErrors { durable.append(errors) }
            if let unreadable = read.unreadable { probeFailure = probeFailure ?? unreadable }
        }

        // A disk no cluster uses: a read-only fsck now and then (never on a system disk), and
        // only once it has stayed unused for a quiet period, so a disk being prepared (mkfs,
        // mount, ceph-volume) is never held open under the tool preparing it.
        if !mounts.isEmpty { slots[id]?.unusedSinceMs = nil } else if slots[id]?.unusedSinceMs == nil { slots[id]?.unusedSinceMs = nowMs }
        let quiet = mounts.isEmpty && nowMs - (slots[id]?.unusedSinceMs ?? nowMs) >= Int64(config.fsckQuietSeconds) * 1000
        if quiet && !device.isSystemDisk && config.fsckIntervalSeconds > 0 {
            if let last = slots[id]?.fsckFinding, nowMs - (slots[id]?.lastFsckAtMs ?? 0) < Int64(config.fsckIntervalSeconds) * 1000 {
                durable.append(last)
            } else if UnusedDiskCheck.busyReason(devicePath: device.identity.devPath, kernelName: Self.kernelName(of: device),
                                                 partitions: partitions, mounts: allMounts) == nil {
                let targets = partitions.isEmpty ? [device.identity.devPath] : partitions
                let timeout = Duration.seconds(config.fsckTimeoutSeconds)
                let finding = try? await offThread {
                    targets.lazy.compactMap { UnusedDiskCheck.check(devicePath: $0, timeout: timeout) }.first
                }
                slots[id]?.fsckFinding = finding
                slots[id]?.lastFsckAtMs = nowMs
                if let finding { durable.append(finding) }
            }
        }
        if let fsck = durable.first(where: { $0.rule == "fs.fsck_errors" }) {
            var finding = Bynar_V1_FilesystemFinding()
            finding.kind = .fsckErrors
            finding.detail = fsck.detail
            findings.append(finding)
        }
        slots[id]?.filesystems = findings
        slots[id]?.checkedAtMs = nowMs
        durable += slots[id]?.zfs ?? []
        durable += slots[id]?.redfish ?? []
        let ceph = slots[id]?.ceph
        await perform(id) { $0.handle(.checked(.init(durable: durable, probeFailed: probeFailure, ceph: ceph, atMs: nowMs))) }
    }

    /// Every slot with a device.
    var presentSlots: [String] { slots.filter { $0.value.device != nil }.map(\.key).sorted() }

    /// Publishes the retained health of every present disk (on start-up, so the retained
    /// view matches the restored states).
    func refreshAll() async {
        for id in presentSlots { await publishHealth(id) }
    }

    // MARK: Actions out

    /// Runs the machine of `id` on an event and performs its actions: the slot's new state
    /// and the events that report it are committed in one transaction (``Outbox/commit``),
    /// then rechecks are scheduled.
    private func perform(_ id: String, _ event: (inout DiskHealthMachine) -> [DiskHealthMachine.Action]) async {
        guard var slot = slots[id] else { return }
        let actions = event(&slot.machine)
        slots[id] = slot
        var recheck = false
        var events: [Outbox.Event] = []
        var save = false
        for action in actions {
            switch action {
            case .announce(let from, let to, let reasons, let previousKey):
                events += announcement(id, from: from, to: to, reasons: reasons, previousKey: previousKey)
            case .refresh:
                events += healthEvent(id)
            case .persist:
                save = true
            case .recheck:
                recheck = true
            case .recheckLater(let afterMs, _):
                Task { [weak self] in
                    try? await Task.sleep(for: .milliseconds(afterMs))
                    await self?.check(id)
                }
            }
        }
        do {
            let row = save ? try slotRow(id) : nil
            try context.outbox.commit(events) { db in
                if let row { try Self.write(row, db) }
            }
        } catch {
            logger.error("cannot save disk state and its events", metadata: ["slot": "\(id)", "events": "\(events.count)", "error": "\(error)"])
        }
        recordDiskStates()
        if recheck { await check(id, forceSmart: true) }
    }

    /// `bynar_detector_disks{host,state}`: this host's disks by health state, after every change.
    private func recordDiskStates() {
        recordStateCounts("bynar_detector_disks", of: slots.values.map(\.machine.state), dimensions: [("host", context.host)])
    }

    private func announcement(_ id: String, from: DiskHealthMachine.State, to: DiskHealthMachine.State, reasons: [DiskHealthMachine.Reason], previousKey: String?) -> [Outbox.Event] {
        guard let slot = slots[id] else { return [] }
        logger.notice("disk state changed", metadata: ["disk": "\(slot.identity.key)", "from": "\(from)", "to": "\(to)", "reasons": "\(reasons.map(\.rule))"])
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = slot.identity
        event.fromState = Self.wire(from)
        event.toState = Self.wire(to)
        event.reasons = reasons.map { Self.wire($0, atMs: slot.machine.sinceMs) }
        if let previousKey {
            event.previousDisk.key = previousKey
            event.previousDisk.host = context.host
        }
        if let smart = slot.smart { event.smart = smart }
        return [Outbox.Event(event, to: Topics.diskEvents(host: context.host))] + healthEvent(id)
    }

    /// The retained health of `id` (none while its state is unknown).
    private func healthEvent(_ id: String) -> [Outbox.Event] {
        guard let slot = slots[id], slot.machine.state != .unknown else { return [] }
        return [Outbox.Event(health(of: slot), to: Topics.diskHealth(host: context.host, disk: slot.identity.key), retain: true)]
    }

    private func publishHealth(_ id: String) async {
        do {
            try context.outbox.commit(healthEvent(id))
        } catch {
            logger.error("cannot store disk health", metadata: ["slot": "\(id)", "error": "\(error)"])
        }
    }

    func health(of slot: Slot) -> Bynar_V1_DiskHealth {
        var health = Bynar_V1_DiskHealth()
        health.disk = slot.identity
        health.state = Self.wire(slot.machine.state)
        health.reasons = slot.machine.reasons.map { Self.wire($0, atMs: slot.machine.sinceMs) }
        if let smart = slot.smart { health.smart = smart }
        health.filesystems = slot.filesystems
        health.stateSinceUnixMs = slot.machine.sinceMs
        health.checkedUnixMs = slot.checkedAtMs
        // A disk that left the host keeps its flags: gone is not a reason to repair a system
        // disk or another host's disk.
        health.systemDisk = slot.device?.isSystemDisk ?? slot.wasSystemDisk
        health.inUseBy = slot.inUseBy
        health.excluded = slot.device?.excluded
            ?? (Inventory.exclusionReason(for: slot.identity, excluded: config.exclude, only: config.watchOnly) != nil)
        return health
    }

    /// The current health of every known slot (for `check` and tests).
    func healths() -> [Bynar_V1_DiskHealth] {
        slots.keys.sorted().compactMap { slots[$0].map(health(of:)) }
    }

    /// A slot as its row in `detector_slot`.
    struct SlotRow {
        var slot: String
        var machine: String
        var identity: [UInt8]
        var seenReadWrite: String
    }

    private func slotRow(_ id: String) throws -> SlotRow? {
        guard let slot = slots[id] else { return nil }
        return SlotRow(slot: id, machine: String(decoding: try JSONEncoder().encode(slot.machine), as: UTF8.self),
                       identity: try slot.identity.serializedBytes(),
                       seenReadWrite: String(decoding: try JSONEncoder().encode(slot.seenReadWrite.sorted()), as: UTF8.self))
    }

    private static func write(_ row: SlotRow, _ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO detector_slot(slot, machine, identity, seen_read_write, updated_unix_ms) VALUES(?, ?, ?, ?, ?)
            ON CONFLICT(slot) DO UPDATE SET machine = excluded.machine, identity = excluded.identity,
                seen_read_write = excluded.seen_read_write, updated_unix_ms = excluded.updated_unix_ms
            """, arguments: [row.slot, row.machine, Data(row.identity), row.seenReadWrite, Bus.nowUnixMs()])
    }

    // MARK: Ceph

    /// The devices of every present slot, for the Ceph watcher to read labels off the actor.
    func presentDevices() -> [String: BlockDevice] {
        slots.compactMapValues(\.device)
    }

    /// What a Ceph cluster said, with the labels just read from the devices: each disk is
    /// tied to the OSD it serves (``OSDDeviceMatcher``, stable identity), and a change in
    /// that OSD's state (down, inconsistent PGs) re-checks the disk.
    func cephView(osds: [CephOSD], health: CephHealth, facts: [String: DeviceFacts], hostname: String, clusterName: String) async {
        let inconsistent = health.inconsistentPGs
        for (id, read) in facts {
            guard var slot = slots[id], slot.device != nil, slot.identity.key == read.key else { continue }
            var facts = read
            let label = facts.labels.lazy.compactMap { label -> BluestoreLabel? in
                if case .bluestore(let bluestore) = label { return bluestore } else { return nil }
            }.first
            if let label {
                slot.cephLabel = label
            } else if facts.labels.contains(where: { if case .unreadable = $0 { true } else { false } }), let known = slot.cephLabel {
                facts.labels = [.bluestore(known)]
            }
            let match = OSDDeviceMatcher.match(facts, osds: osds, hostname: hostname).first { $0.role == .main }
            var wanted: DiskHealthMachine.CephFacts?
            let usedBefore = slot.inUseBy
            if let match, let osd = osds.first(where: { $0.id == match.osd }), osd.exists, !osd.destroyed {
                wanted = .init(osd: osd.id, up: osd.up, inconsistentPGs: inconsistent.filter { $0.acting.contains(osd.id) }.map(\.pg).sorted())
                slot.inUseBy = "ceph osd.\(osd.id) (cluster \(clusterName))"
            } else if slot.inUseBy.hasPrefix("ceph ") {
                // Only its own label: a ZFS vdev's ("zfs pool ...") is the ZFS watcher's.
                slot.inUseBy = ""
            }
            let changed = wanted != slot.ceph
            slot.ceph = wanted
            slots[id] = slot
            if slot.inUseBy != usedBefore { await publishHealth(id) }
            if changed {
                logger.notice("ceph view of disk changed", metadata: [
                    "disk": "\(slot.identity.key)", "osd": "\(wanted.map { "osd.\($0.osd)" } ?? "none")",
                    "up": "\(wanted?.up ?? false)", "inconsistent_pgs": "\(wanted?.inconsistentPGs ?? [])",
                    "evidence": "\(match?.evidence ?? "")"])
                Task { await self.check(id) }
            }
        }
    }

    // MARK: ZFS

    /// What the pools said: each present disk that is a vdev gets its reasons (``ZFSRules``)
    /// as evidence, and is re-checked when they changed.
    func zfsView(_ status: ZpoolStatus, verdict: ZFSRules.Verdict) async {
        for (id, slot) in slots {
            guard let device = slot.device else { continue }
            var reasons: [DiskHealthMachine.Reason] = []
            var usedBy = slot.inUseBy.hasPrefix("zfs ") ? "" : slot.inUseBy
            if let (pool, leaf) = ZpoolStatus.find(device, in: status) {
                reasons = verdict.disks[pool.name]?[leaf.name] ?? []
                if usedBy.isEmpty { usedBy = "zfs pool \(pool.name) (vdev \(leaf.name))" }
            }
            let changed = reasons != slot.zfs
            let usedChanged = usedBy != slot.inUseBy
            slots[id]?.zfs = reasons
            slots[id]?.inUseBy = usedBy
            if usedChanged { await publishHealth(id) }
            if changed {
                logger.notice("ZFS view of disk changed", metadata: ["disk": "\(slot.identity.key)", "reasons": "\(reasons.map(\.detail))"])
                Task { await self.check(id) }
            }
        }
    }

    // MARK: Redfish

    /// What the BMC said about its drives: a drive whose serial is a present disk's gives
    /// that disk its findings as evidence (re-checked when they changed). Returns the disk
    /// key of each matched drive finding, by part id: those go through the disk workflow.
    func redfishView(_ findings: [HardwareFinding]) async -> [String: String] {
        var matched: [String: String] = [:]
        for (id, slot) in slots {
            guard slot.device != nil, let serial = Self.normalizedSerial(slot.identity.serial) else { continue }
            let mine = findings.filter { $0.part.kind == .drive && Self.normalizedSerial($0.part.serial) == serial }
            for finding in mine { matched[finding.part.id] = slot.identity.key }
            let reasons = mine.map { DiskHealthMachine.Reason(rule: $0.reason, severity: Self.diskSeverity($0), detail: "BMC: " + $0.detail) }
            guard reasons != slot.redfish else { continue }
            slots[id]?.redfish = reasons
            logger.notice("BMC view of disk changed", metadata: ["disk": "\(slot.identity.key)", "reasons": "\(reasons.map(\.detail))"])
            Task { await self.check(id) }
        }
        return matched
    }

    /// A drive the BMC calls Critical is FAILED, one predicting its failure FAILING
    /// (replaced before it dies), a warning SUSPECT.
    static func diskSeverity(_ finding: HardwareFinding) -> DiskHealthMachine.State {
        switch finding.rule {
        case "R2", "R3": .failed
        case "R4": .failing
        default: .suspect
        }
    }

    /// Serials compared as BMCs and the kernel print them: trimmed, upper case.
    static func normalizedSerial(_ serial: String?) -> String? {
        guard let text = serial?.trimmingCharacters(in: .whitespaces).uppercased(), !text.isEmpty else { return nil }
        return text
    }

    // MARK: SMART samples

    /// SMART through libatasmart, or smartctl when libatasmart cannot talk to the disk.
    static func readSmart(_ device: BlockDevice, smartctlPath: String) -> Result<SmartReading, SmartError> {
        do {
            return .success(try AtaSmart.read(device: device.identity.devPath))
        } catch {
            // Not ATA, or libatasmart cannot talk to it (SAS, NVMe, RAID): ask smartctl.
            do {
                return .success(try Smartctl(executable: smartctlPath).read(device: device.identity.devPath))
            } catch let fallback {
                return .failure(fallback)
            }
        }
    }

    private func saveSample(key: String, reading: SmartReading, atMs: Int64) {
        do {
            let json = String(decoding: try JSONEncoder().encode(reading), as: UTF8.self)
            try context.store.database.write { db in
                try db.execute(sql: "INSERT INTO smart_sample(disk_key, taken_unix_ms, reading) VALUES(?, ?, ?)", arguments: [key, atMs, json])
                try db.execute(sql: """
                    DELETE FROM smart_sample WHERE disk_key = ? AND id NOT IN
                        (SELECT id FROM smart_sample WHERE disk_key = ? ORDER BY id DESC LIMIT ?)
                    """, arguments: [key, key, config.smartSamplesKept])
            }
        } catch {
            logger.error("cannot save SMART sample", metadata: ["disk": "\(key)", "error": "\(error)"])
        }
    }

    private func lastSample(key: String) throws -> SmartReading? {
        let json = try context.store.database.read { db in
            try String.fetchOne(db, sql: "SELECT reading FROM smart_sample WHERE disk_key = ? ORDER BY id DESC LIMIT 1", arguments: [key])
        }
        return try json.map { try JSONDecoder().decode(SmartReading.self, from: Data($0.utf8)) }
    }

    // MARK: Mapping

    /// The physical position of a disk: its by-path link when udev made one, else its
    /// sysfs device path without the block name (the controller port), else for virtual
    /// devices (loop) the kernel name.
    static func slotID(of device: BlockDevice) -> String {
        if !device.identity.byPath.isEmpty { return "by-path:" + device.identity.byPath }
        let path = device.sysPath
        if path.contains("/virtual/") { return "virtual:" + kernelName(of: device) }
        if let range = path.firstRange(of: "/block/") { return "sys:" + path[..<range.lowerBound] }
        return "dev:" + kernelName(of: device)
    }

    /// The mounts of `device` itself or of its partitions.
    static func mounts(of device: BlockDevice, in all: [MountedFilesystem]) -> [MountedFilesystem] {
        let paths = Set([device.identity.devPath] + device.identity.partitions.map(\.devPath))
        return all.filter { paths.contains($0.source) }
    }

    static func kernelName(of device: BlockDevice) -> String {
        String(device.identity.devPath.split(separator: "/").last ?? "")
    }

    static func hasSmart(_ device: BlockDevice) -> Bool {
        switch device.identity.transport {
        case .loop, .virtual: false
        default: true
        }
    }

    static func reason(_ reason: Bynar_V1_HealthReason) -> DiskHealthMachine.Reason {
        .init(rule: reason.rule, severity: state(reason.severity), detail: reason.detail)
    }

    /// The inverse of ``wire(_:)-swift.type.method``.
    static func state(_ state: Bynar_V1_DiskState) -> DiskHealthMachine.State {
        DiskHealthMachine.State.allCases.first { wire($0) == state } ?? .unknown
    }

    static func wire(_ state: DiskHealthMachine.State) -> Bynar_V1_DiskState {
        switch state {
        case .unknown: .unspecified
        case .healthy: .healthy
        case .suspect: .suspect
        case .failing: .failing
        case .failed: .failed
        case .missing: .missing
        case .replaced: .replaced
        }
    }

    static func wire(_ reason: DiskHealthMachine.Reason, atMs: Int64) -> Bynar_V1_HealthReason {
        var wire = Bynar_V1_HealthReason()
        wire.rule = reason.rule
        wire.severity = Self.wire(reason.severity)
        wire.detail = reason.detail
        wire.observedUnixMs = atMs
        return wire
    }

    static func finding(_ mount: MountedFilesystem, _ reason: DiskHealthMachine.Reason) -> Bynar_V1_FilesystemFinding {
        var finding = Bynar_V1_FilesystemFinding()
        finding.mountpoint = mount.mountpoint
        finding.filesystem = mount.fsType
        finding.detail = reason.detail
        finding.kind = switch reason.rule {
        case "fs.emergency_ro", "fs.read_only_remount": .readOnlyRemount
        case "fs.ext4_errors": .ext4Errors
        case "fs.xfs_shutdown": .xfsShutdown
        case "fs.probe_timeout": .probeTimeout
        default: .probeFailed
        }
        return finding
    }
}
