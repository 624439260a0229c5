// The orchestrator under simulated load, through the real broker (driven by
// scripts/bench-orchestrator, which starts mosquitto and bynar-orchestrator):
//
//   bynar-bench orchestrator --port P [--hosts 10000] [--rate 1000] [--seconds 10] [--flood 20000]
//
// 1. `hosts` hosts announce themselves (retained detector births); timed until the
//    orchestrator has published a HostState for every one of them.
// 2. `rate` incidents per second for `seconds`: a FAILED DiskHealthEvent plus the FAILED
//    DiskHealth that the detector publishes after it, each on a different disk, spread over
//    the hosts. Decision latency = event published → the first IncidentEvent or SafeToRemove
//    request for that disk seen on the bus.
// 3. `flood` incidents published as fast as possible: the orchestrator's decision rate next to
//    the rate at which a plain subscriber of the same topics receives them (what the broker
//    moves raw in the same run).
//    With `--stop-during-flood PID` (the orchestrator's pid): the orchestrator is stopped
//    (SIGSTOP) while the flood is published and continued once the plain subscriber has all
//    of it; its rate counts from then. That is what it takes from a backlog with the cores
//    shared only with the broker, not a rate a live flood can show on this machine.
//
// SafeToRemove requests are answered at once by this process (it plays every host's
// disk-manager, without checking signatures): "not safe" by default, so each incident goes
// on to QUEUED after asking; with `--safe`, "safe" (a HEALTH_OK cluster) and each Remove
// "done", so the cluster brake (max_out_per_cluster, default 2) fills with the first
// incidents and holds the others, which then go on to QUEUED without asking.
import BynarBus
import BynarConfig
import BynarProto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// When each disk's failure was published and when the orchestrator's first reaction was seen.
final class DecisionLog: Sendable {
    private struct State {
        var published: [String: ContinuousClock.Instant] = [:]
        var decided: [String: ContinuousClock.Instant] = [:]
        /// Disks whose incident said QUEUED (or, with `--safe`, went on to be removed).
        var queued: Set<String> = []
        /// The phase each published disk belongs to, how many of each phase were decided and
        /// how many published disks were queued so far: counted as they come, so the waits
        /// below poll a number, not every key (a scan of 20,000-30,000 keys every 20 ms under
        /// this lock took CPU and the lock from the process's own subscribers while the
        /// orchestrator was measured).
        var phaseOf: [String: Phase] = [:]
        var decidedIn: [Phase: Int] = [:]
        var queuedCount = 0
        var rawArrivals: [ContinuousClock.Instant] = []
        var hostStates: Set<String> = []
        var hostStatesDone: ContinuousClock.Instant?
    }
    private let state = Mutex(State())
    let hosts: Int
    init(hosts: Int) { self.hosts = hosts }

    enum Phase { case steady, flood }
    func published(_ keys: [String], at instant: ContinuousClock.Instant, phase: Phase) {
        state.withLock { state in
            for key in keys {
                state.published[key] = instant
                state.phaseOf[key] = phase
            }
        }
    }
    func decided(_ key: String) {
        let now = ContinuousClock.now
        state.withLock { state in
            guard state.decided[key] == nil else { return }
            state.decided[key] = now
            if let phase = state.phaseOf[key] { state.decidedIn[phase, default: 0] += 1 }
        }
    }
    func queued(_ key: String) {
        state.withLock { state in
            guard state.queued.insert(key).inserted, state.phaseOf[key] != nil else { return }
            state.queuedCount += 1
        }
    }
    /// Published disks whose incident was QUEUED (or removed).
    var queuedCount: Int { state.withLock { $0.queuedCount } }
    func raw() {
        let now = ContinuousClock.now
        state.withLock { $0.rawArrivals.append(now) }
    }
    func hostState(_ host: String) {
        let now = ContinuousClock.now
        state.withLock { state in
            state.hostStates.insert(host)
            if state.hostStates.count == hosts && state.hostStatesDone == nil { state.hostStatesDone = now }
        }
    }
    var hostStatesDone: ContinuousClock.Instant? { state.withLock { $0.hostStatesDone } }
    /// Disks of `phase` whose incident the orchestrator reported (or asked about).
    func decidedCount(_ phase: Phase) -> Int { state.withLock { $0.decidedIn[phase] ?? 0 } }
    /// Latencies in ms, and the first publish and last decision, for `keys`.
    func latencies(_ keys: [String]) -> (ms: [Double], first: ContinuousClock.Instant?, last: ContinuousClock.Instant?) {
        state.withLock { state in
            var ms: [Double] = []
            var first: ContinuousClock.Instant?, last: ContinuousClock.Instant?
            for key in keys {
                guard let sent = state.published[key] else { continue }
                first = min(first ?? sent, sent)
                guard let seen = state.decided[key] else { continue }
                last = max(last ?? seen, seen)
                ms.append(seconds(seen - sent) * 1000)
            }
            return (ms.sorted(), first, last)
        }
    }
    /// Messages the raw subscriber has taken in all (not a scan: polled while it takes more).
    var rawMessages: Int { state.withLock { $0.rawArrivals.count } }
    /// The raw subscriber's incidents (two messages each) since `start`, and its first and
    /// last arrival.
    func rawWindow(from start: ContinuousClock.Instant) -> (count: Int, first: ContinuousClock.Instant?, last: ContinuousClock.Instant?) {
        state.withLock { state in
            let window = state.rawArrivals.filter { $0 >= start }
            return (window.count / 2, window.first, window.last)
        }
    }
}

func benchOrchestrator(port: Int, hosts: Int, rate: Int, seconds runSeconds: Int, flood: Int, safe: Bool, stopDuringFlood: pid_t? = nil) async throws {
    let log = DecisionLog(hosts: hosts)
    let observer = try await makeBus("observer", port: port)
    let raw = try await makeBus("raw", port: port)
    let detector = try await makeBus("detector", port: port)
    let hostName = { (index: Int) in "host-\(index % hosts)" }

    // Play every disk-manager: note the request, answer "not safe" (with `--safe`: "safe",
    // and a Remove "done").
    let commands = try await observer.subscribe(Topics.diskManagerCommands(host: "+"), as: Bynar_V1_DiskManagerRequest.self, buffer: 1 << 20)
    let responder = Task {
        for await command in commands {
            var response = Bynar_V1_DiskManagerResponse()
            response.requestID = command.payload.requestID
            response.host = command.payload.host
            response.outcome = .success
            switch command.payload.operation {
            case .safeToRemove(let ask)?:
                log.decided(ask.disk.key)
                response.safeToRemove.safe = safe
                response.safeToRemove.detail = safe ? "bench: safe" : "bench: not safe"
                response.safeToRemove.clusterHealth = "HEALTH_OK"
            case .remove? where safe:
                response.reason = "bench: removed"
            default:
                continue
            }
            // As the host's disk-manager: the orchestrator takes a reply only from the
            // responder it asked (the topic names it; this broker has no ACL to refuse it).
            Task { try? await observer.reply(to: command, with: response, asHost: command.payload.host, service: "disk-manager") }
        }
    }
    let incidents = try await observer.subscribe(Topics.incidentEvents, as: Bynar_V1_IncidentEvent.self, buffer: 1 << 20)
    let incidentWatcher = Task {
        for await event in incidents {
            log.decided(event.payload.incident.disk.key)
            switch event.payload.incident.state {
            case .queued, .removing, .removed: log.queued(event.payload.incident.disk.key)
            default: break
            }
        }
    }
    let hostStates = try await observer.subscribe(Topics.hostState(host: "+"), as: Bynar_V1_HostState.self, buffer: 1 << 20)
    let hostWatcher = Task { for await state in hostStates where state.payload.up { log.hostState(state.payload.host) } }
    // The raw subscriber takes what the orchestrator takes of each incident: the failure
    // event and the disk's health. Its rate is in incidents (two messages each).
    let rawEvents = try await raw.subscribe(Topics.diskEvents(host: "+"), as: Bynar_V1_DiskHealthEvent.self, buffer: 1 << 20)
    let rawHealth = try await raw.subscribe(Topics.diskHealth(host: "+", disk: "+"), as: Bynar_V1_DiskHealth.self, buffer: 1 << 20)
    let rawWatcher = Task {
        await withDiscardingTaskGroup { group in
            group.addTask { for await _ in rawEvents { log.raw() } }
            group.addTask { for await _ in rawHealth { log.raw() } }
        }
    }

    // 1. Births.
    let birthsStarted = ContinuousClock.now
    var batch: [(bytes: [UInt8], topic: String, retain: Bool)] = []
    for index in 0..<hosts {
        var status = Bynar_V1_ServiceStatus()
        status.service = "detector"
        status.host = hostName(index)
        status.state = .birth
        status.session = 1
        status.startedUnixMs = Bus.nowUnixMs()
        batch.append((try Bus.serialize(detector.envelope(status)), Topics.serviceStatus(host: status.host, service: "detector"), true))
        if batch.count == Bus.maxBatch || index == hosts - 1 {
            _ = try await detector.publish(batch: batch)
            batch = []
        }
    }
    let birthsPublished = ContinuousClock.now
    while log.hostStatesDone == nil && ContinuousClock.now - birthsStarted < .seconds(120) { try await Task.sleep(for: .milliseconds(20)) }
    let membership = log.hostStatesDone.map { seconds($0 - birthsStarted) }

    func failure(_ key: String, host: String) throws -> [(bytes: [UInt8], topic: String, retain: Bool)] {
        var disk = Bynar_V1_DiskIdentity()
        disk.host = host
        disk.key = key
        disk.serial = String(key.dropFirst("serial-".count))
        disk.devPath = "/dev/sdb"
        var reason = Bynar_V1_HealthReason()
        reason.rule = "smart.overall_failing"
        reason.severity = .failed
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = disk
        event.fromState = .failing
        event.toState = .failed
        event.reasons = [reason]
        var health = Bynar_V1_DiskHealth()
        health.disk = disk
        health.state = .failed
        health.reasons = [reason]
        health.stateSinceUnixMs = Bus.nowUnixMs()
        return [
            (try Bus.serialize(detector.envelope(event)), Topics.diskEvents(host: host), false),
            (try Bus.serialize(detector.envelope(health)), Topics.diskHealth(host: host, disk: key), true),
        ]
    }

    // 2. Steady rate, in 10 ms slices.
    let steadyKeys = (0..<(rate * runSeconds)).map { "serial-S\($0)" }
    let perSlice = max(1, rate / 100)
    let steadyStart = ContinuousClock.now
    var next = 0
    var slice = 0
    while next < steadyKeys.count {
        let due = steadyStart + .milliseconds(10 * slice)
        if due > .now { try await Task.sleep(until: due) }
        let keys = Array(steadyKeys[next..<min(steadyKeys.count, next + perSlice)])
        var messages: [(bytes: [UInt8], topic: String, retain: Bool)] = []
        for (offset, key) in keys.enumerated() { messages += try failure(key, host: hostName(next + offset)) }
        log.published(keys, at: .now, phase: .steady)
        _ = try await detector.publish(batch: messages)
        next += keys.count
        slice += 1
    }
    let steadyPublished = ContinuousClock.now
    let steadyDeadline = ContinuousClock.now + .seconds(60)
    while log.decidedCount(.steady) < steadyKeys.count && ContinuousClock.now < steadyDeadline { try await Task.sleep(for: .milliseconds(20)) }
    let steady = log.latencies(steadyKeys)
    let steadyRaw = log.rawWindow(from: steadyStart)
    try await Task.sleep(for: .seconds(2))

    // 3. Flood.
    let floodKeys = (0..<flood).map { "serial-F\($0)" }
    if let stopDuringFlood, kill(stopDuringFlood, SIGSTOP) != 0 {
        writeToStandardError("bynar-bench: cannot stop the orchestrator (pid \(stopDuringFlood)): errno \(errno)")
        exit(1)
    }
    let floodStart = ContinuousClock.now
    let rawBeforeFlood = log.rawMessages
    var index = 0
    while index < floodKeys.count {
        let keys = Array(floodKeys[index..<min(floodKeys.count, index + Bus.maxBatch / 2)])
        var messages: [(bytes: [UInt8], topic: String, retain: Bool)] = []
        for (offset, key) in keys.enumerated() { messages += try failure(key, host: hostName(index + offset)) }
        log.published(keys, at: .now, phase: .flood)
        _ = try await detector.publish(batch: messages)
        index += keys.count
    }
    let floodPublished = ContinuousClock.now
    let floodDeadline = ContinuousClock.now + .seconds(120)
    var continued: ContinuousClock.Instant?
    if let stopDuringFlood {
        while log.rawMessages - rawBeforeFlood < 2 * flood && ContinuousClock.now < floodDeadline { try await Task.sleep(for: .milliseconds(20)) }
        continued = ContinuousClock.now
        if kill(stopDuringFlood, SIGCONT) != 0 {
            writeToStandardError("bynar-bench: cannot continue the orchestrator (pid \(stopDuringFlood)): errno \(errno)")
            exit(1)
        }
    }
    while log.decidedCount(.flood) < floodKeys.count && ContinuousClock.now < floodDeadline { try await Task.sleep(for: .milliseconds(20)) }
    let floodResult = log.latencies(floodKeys)
    let floodRaw = log.rawWindow(from: floodStart)
    // Every incident of the run on to QUEUED (its SafeToRemove answered "not safe", or the
    // brake holding it), or with `--safe` removed.
    let allKeys = steadyKeys + floodKeys
    while log.queuedCount < allKeys.count && ContinuousClock.now < floodDeadline { try await Task.sleep(for: .milliseconds(20)) }
    let allQueued = ContinuousClock.now

    func perSecond(_ count: Int, _ first: ContinuousClock.Instant?, _ last: ContinuousClock.Instant?) -> Double {
        guard let first, let last, last > first else { return 0 }
        return Double(count) / seconds(last - first)
    }
    print("orchestrator_bench hosts=\(hosts) safe_to_remove_answer=\(safe ? "safe" : "not-safe")")
    print("membership births_published_s=\(format3(seconds(birthsPublished - birthsStarted))) all_host_states_s=\(membership.map(format3) ?? "timeout")")
    if steady.ms.isEmpty {
        print("steady rate=\(rate)/s seconds=\(runSeconds) decided=0")
    } else {
        let steadyRate = perSecond(steady.ms.count, steady.first, steady.last)
        let rawRate = perSecond(steadyRaw.count, steadyRaw.first, steadyRaw.last)
        print("steady offered=\(rate)/s seconds=\(runSeconds) published_s=\(format3(seconds(steadyPublished - steadyStart))) decided=\(steady.ms.count)/\(steadyKeys.count) "
              + "latency_ms p50=\(format3(percentile(steady.ms, 0.5))) p99=\(format3(percentile(steady.ms, 0.99))) max=\(format3(steady.ms.last!)) "
              + "orchestrator_per_s=\(Int(steadyRate)) raw_per_s=\(Int(rawRate)) fraction=\(format3(rawRate > 0 ? steadyRate / rawRate : 0))")
    }
    if let continued, !floodResult.ms.isEmpty {
        let aloneRate = perSecond(floodResult.ms.count, continued, floodResult.last)
        let rawRate = perSecond(floodRaw.count, floodRaw.first, floodRaw.last)
        print("backlog incidents=\(flood) (the orchestrator stopped while they were published) decided=\(floodResult.ms.count) "
              + "orchestrator_alone_per_s=\(Int(aloneRate)) raw_per_s=\(Int(rawRate)) ratio=\(format3(rawRate > 0 ? aloneRate / rawRate : 0))")
    } else if !floodResult.ms.isEmpty {
        let floodRate = perSecond(floodResult.ms.count, floodResult.first, floodResult.last)
        let rawRate = perSecond(floodRaw.count, floodRaw.first, floodRaw.last)
        print("flood incidents=\(flood) published_s=\(format3(seconds(floodPublished - floodStart))) decided=\(floodResult.ms.count) orchestrator_per_s=\(Int(floodRate)) raw_per_s=\(Int(rawRate)) "
              + "fraction=\(format3(rawRate > 0 ? floodRate / rawRate : 0)) latency_ms p10=\(format3(percentile(floodResult.ms, 0.1))) p50=\(format3(percentile(floodResult.ms, 0.5))) p99=\(format3(percentile(floodResult.ms, 0.99)))")
    }
    print("queued \(log.queuedCount)/\(allKeys.count) incidents QUEUED (or removed) \(format3(seconds(allQueued - floodStart))) s after the flood began")
    for task in [responder, incidentWatcher, hostWatcher, rawWatcher] { task.cancel() }
    await observer.shutdown()
    await raw.shutdown()
    await detector.shutdown()
}

func format3(_ value: Double) -> String {
    let scaled = (value * 1000).rounded() / 1000
    return "\(scaled)"
}
