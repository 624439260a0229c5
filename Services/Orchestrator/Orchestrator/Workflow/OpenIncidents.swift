/// The open incidents as ``RepairCore`` holds them: a small ``Entry`` for every one (what
/// the decisions across incidents read: its state, cluster, when it is due; which disk it
/// holds; where the disks the brake counts out are) and the whole machines of at most
/// ``capacity`` of them, the most recently used. The other machines are in the journal
/// (`IncidentJournal`), which has every open incident as last committed; the shell reads one
/// back when something happens to it (``RepairCore/Effects/load``). Pure: no I/O, no clock.
///
/// Rules:
/// 1. Every open incident (STUCK and kept-out cancelled ones included: their disks may be
///    out) has an entry and holds its disk; a closed one has neither, and its disk is free
///    for a new incident.
/// 2. What is kept of an incident is rebuilt from its machine on every change
///    (``update(_:)``): it says what the machine says.
/// 3. A machine changed in a batch stays in memory until the shell committed the batch:
///    only ``trim()``, which the shell calls after a commit, drops machines.
/// 4. ``trim()`` keeps at most ``capacity`` machines and drops the others (they are in the
///    journal as they are here): those waiting for nothing first, then those used longest
///    ago.
///
/// Memory: about 200 bytes per open incident (the entry, its id and disk key, the indexes)
/// plus the machines in memory (about 2 kB each); `RepairCoreTests` and
/// docs/orchestrator.md ("Memory") have the measured figures.
struct OpenIncidents: Sendable {
    /// What the core keeps of every open incident, in memory or not.
    struct Entry: Sendable, Equatable {
        var state: IncidentMachine.State
        var cluster: String
        /// ``IncidentMachine/dueMs`` (`.max`: nothing due).
        var dueMs: Int64
        /// When it entered its state (for the figures).
        var sinceMs: Int64
    }

    /// The slot of an incident waiting for its new disk (TICKETED or WAITING_FOR_REPLACEMENT,
    /// none seen yet): a disk the detector reports there is its replacement.
    struct Slot: Sendable, Equatable {
        var host: String
        var key: String
        var byPath: String
        var devPath: String
        var openedMs: Int64
    }

    /// Most machines kept in memory after ``trim()``.
    let capacity: Int
    private(set) var entries: [String: Entry] = [:]
    /// The machines in memory, with when each was last used.
    private var held: [String: (machine: IncidentMachine, usedAt: UInt64)] = [:]
    /// Every use, oldest first, from `usedFrom` on: ``trim()`` takes the oldest whose
    /// machine was not used since (a later use made the entry stale), so dropping costs
    /// no sort.
    private var used: [(id: String, at: UInt64)] = []
    private var usedFrom = 0
    /// The open incident of each disk ("host/key").
    private(set) var byDisk: [String: String] = [:]
    /// Where the disks the brake counts out are, by incident.
    private(set) var out: [String: ClusterBrake.Placement] = [:]
    /// Incidents waiting for a new disk in their slot.
    private(set) var awaitingNewDisk: [String: Slot] = [:]
    /// Open incidents per state (the figures).
    private(set) var countByState: [IncidentMachine.State: Int] = [:]
    /// Queued incidents per cluster (asked again when capacity there comes free).
    private var queuedByCluster: [String: Set<String>] = [:]
    /// When each incident is due, earliest first (a binary heap). An incident's later
    /// change pushes its new time; an element whose time is no longer its incident's is
    /// stale and skipped when it comes up.
    private var dueHeap: [(at: Int64, id: String)] = []
    private var uses: UInt64 = 0

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    var count: Int { entries.count }

    /// How many machines are in memory.
    var inMemory: Int { held.count }

    /// The machines in memory (open ones, and those closed in the batch being committed).
    var machines: [String: IncidentMachine] { held.mapValues(\.machine) }

    func machine(_ id: String) -> IncidentMachine? { held[id]?.machine }

    /// Open, but its machine is in the journal only: it must be read back before use.
    func needsLoading(_ id: String) -> Bool { entries[id] != nil && held[id] == nil }

    /// Disks counted out per cluster (the figures).
    var outByCluster: [String: Int] {
        var counts: [String: Int] = [:]
        for placement in out.values { counts[placement.cluster, default: 0] += 1 }
        return counts
    }

    /// The incident's machine after it was opened or changed: in memory, and what is kept
    /// of it rebuilt; a closed incident loses its entry and frees its disk (its machine
    /// stays in memory until ``forget(closed:)``, after the commit).
    mutating func update(_ machine: IncidentMachine) {
        let id = machine.id
        uses += 1
        held[id] = (machine, uses)
        used.append((id, uses))
        let old = entries[id]
        if let old {
            countByState[old.state, default: 0] -= 1
            if old.state == .queued { queuedByCluster[old.cluster]?.remove(id) }
        }
        let disk = RepairEngine.diskKey(machine.disk.host, machine.disk.key)
        guard !machine.isClosed else {
            entries[id] = nil
            if byDisk[disk] == id { byDisk[disk] = nil }
            out[id] = nil
            awaitingNewDisk[id] = nil
            return
        }
        let due = machine.dueMs ?? .max
        entries[id] = Entry(state: machine.state, cluster: machine.cluster, dueMs: due, sinceMs: machine.stateSinceMs ?? machine.openedMs)
        countByState[machine.state, default: 0] += 1
        if machine.state == .queued { queuedByCluster[machine.cluster, default: []].insert(id) }
        // Stuck and kept-out incidents hold their disk too: no second incident for it.
        if byDisk[disk] != id { byDisk[disk] = id }
        out[id] = machine.countsAsOut ? RepairEngine.placement(machine) : nil
        let awaiting = (machine.state == .waitingForReplacement || machine.state == .ticketed) && machine.newDisk == nil
        awaitingNewDisk[id] = awaiting
            ? Slot(host: machine.disk.host, key: machine.disk.key, byPath: machine.disk.byPath, devPath: machine.disk.devPath, openedMs: machine.openedMs)
            : nil
        if due != .max && due != old?.dueMs { pushDue(due, id) }
    }

    /// Machines read back from the journal (or, at start, every open incident): open ones
    /// are kept and held in memory until the next ``trim()``; closed ones are ignored.
    mutating func load(_ loaded: [IncidentMachine]) {
        for machine in loaded where !machine.isClosed {
            if held[machine.id] != nil {
                // Memory is never behind the journal: what is here wins.
                touch(machine.id)
                continue
            }
            update(machine)
        }
    }

    /// Notes that `id` was used now (``trim()`` keeps the machines used last).
    mutating func touch(_ id: String) {
        guard held[id] != nil else { return }
        uses += 1
        held[id]?.usedAt = uses
        used.append((id, uses))
    }

    /// After the commit: closed incidents' machines leave memory (the journal has them).
    mutating func forget(closed ids: [String]) {
        for id in ids where entries[id] == nil { held[id] = nil }
    }

    /// Once over ``capacity``, drops machines down to seven eighths of it (only after a
    /// commit: they are in the journal as they are here; a slack of an eighth, so this runs
    /// once per so many new machines, not once per batch). First those with no step in
    /// flight (queued, waiting for a technician or a new disk, stuck: nothing is expected
    /// of them soon), used longest ago first; then any, used longest ago first. Returns how
    /// many were dropped.
    @discardableResult
    mutating func trim() -> Int {
        var dropped = 0
        if held.count > capacity {
            let keep = capacity * 7 / 8
            var index = usedFrom
            while held.count > keep && index < used.count {
                let (id, at) = used[index]
                index += 1
                if let entry = held[id], entry.usedAt == at, entry.machine.step == nil {
                    held[id] = nil
                    dropped += 1
                }
            }
            while held.count > keep && usedFrom < used.count {
                let (id, at) = used[usedFrom]
                usedFrom += 1
                if held[id]?.usedAt == at {
                    held[id] = nil
                    dropped += 1
                }
            }
        }
        // The stale uses are let go once they outnumber the live ones.
        if used.count - usedFrom > 4 * max(held.count, 64) || usedFrom > used.count / 2 {
            used = held.map { (id: $0.key, at: $0.value.usedAt) }.sorted { $0.at < $1.at }
            usedFrom = 0
        }
        return dropped
    }

    /// Open incidents due at `nowMs` (deadlines, retries, rechecks, re-announcements), in
    /// id order: the heap's head, not a look through every incident.
    mutating func due(nowMs: Int64) -> [String] {
        var due: Set<String> = []
        while let head = dueHeap.first, head.at <= nowMs {
            popDue()
            if entries[head.id]?.dueMs == head.at { due.insert(head.id) }
        }
        // Still due after being handled (time did not change it): asked again next time.
        for id in due { pushDue(entries[id]!.dueMs, id) }
        if dueHeap.count > 4 * max(entries.count, 64) {
            // Mostly stale: rebuilt from the entries.
            dueHeap = []
            for (id, entry) in entries where entry.dueMs != .max { pushDue(entry.dueMs, id) }
        }
        return due.sorted()
    }

    private mutating func pushDue(_ at: Int64, _ id: String) {
        dueHeap.append((at, id))
        var child = dueHeap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard dueHeap[child].at < dueHeap[parent].at else { break }
            dueHeap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popDue() {
        dueHeap.swapAt(0, dueHeap.count - 1)
        dueHeap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < dueHeap.count && dueHeap[left].at < dueHeap[smallest].at { smallest = left }
            if right < dueHeap.count && dueHeap[right].at < dueHeap[smallest].at { smallest = right }
            guard smallest != parent else { return }
            dueHeap.swapAt(parent, smallest)
            parent = smallest
        }
    }

    /// Queued incidents of `cluster`, in id order.
    func queued(in cluster: String) -> [String] {
        (queuedByCluster[cluster] ?? []).sorted()
    }

    /// Where the disks the brake counts out are, but for `id`'s.
    func outPlacements(except id: String) -> [ClusterBrake.Placement] {
        out.filter { $0.key != id }.map(\.value)
    }
}
