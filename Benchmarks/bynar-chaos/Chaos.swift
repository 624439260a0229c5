// bynar-chaos: the chaos run (scripts/chaos). Every real Bynar service on several "hosts" of
// this machine, a real mosquitto, real faultfs-backed loop disks with ext4 managed by the
// disk-managers' filesystem backend, the stand-in JIRA, and a scripted technician. Disks fail
// over time while services and the broker are killed with SIGKILL and restarted; at the end it
// prints what really happened and exits 1 when a target is missed. docs/performance.md.
import BynarAuth
import BynarBus
import BynarProto
import BynarTestSupport
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

func fail(_ text: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("bynar-chaos: \(text)\n".utf8))
    exit(code)
}

func chaosRun(_ run: ChaosRun, options: Options) async -> Int32 {
    let observer: Bus
    do { observer = try await run.setUp() } catch {
        run.say("set-up failed: \(error)")
        run.cleanUp()
        return 1
    }
    // Kept for the whole run: a subscription whose consumer goes away leaves the broker
    // delivering to a session nobody reads.
    let statuses: Collector<Received<Bynar_V1_ServiceStatus>>
    let progress: Collector<Received<Bynar_V1_JobProgress>>
    let healths: Collector<Received<Bynar_V1_DiskHealth>>
    do {
        statuses = Collector(try await observer.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self))
        progress = Collector(try await observer.subscribe("bynar/v1/dm/+/progress", as: Bynar_V1_JobProgress.self))
        healths = Collector(try await observer.subscribe("bynar/v1/disk/+/+/health", as: Bynar_V1_DiskHealth.self))
    } catch {
        run.say("cannot watch the bus: \(error)")
        run.cleanUp()
        return 1
    }
    do {
        func born(_ service: ManagedService) async -> Bool {
            let parts = service.name.split(separator: ".")
            let topic = Topics.serviceStatus(host: parts.count > 1 ? String(parts[1]) : "central", service: String(parts[0]))
            return await statuses.wait(timeout: .seconds(60)) { $0.contains { $0.topic == topic && $0.payload.state == .birth } }
        }

        // The disk-managers first: each deploys its host's disks (the operator's step before
        // Bynar watches them), one at a time per host, every host at once.
        let managers = run.services.filter { $0.executable == "bynar-disk-manager" }
        for manager in managers { try manager.start() }
        for manager in managers where !(await born(manager)) { throw TestSupportError("\(manager.name) did not come up:\n\(manager.log.suffix(3000))") }
        let client = try DiskManagerClient(bus: observer, privateKeyFile: run.work + "/operator.key")
        run.say("deploying \(options.disks) disks (ext4, mounted by UUID) through the disk-managers")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for host in run.hosts {
                let hostSlots = run.slots.filter { $0.host == host }
                group.addTask {
                    for slot in hostSlots {
                        var selector = Bynar_V1_DiskSelector()
                        selector.devPath = slot.current.device
                        let answer = try await client.send(.deploy(.with { $0.disk = selector }), to: host, timeout: .seconds(60))
                        guard answer.outcome == .accepted else { throw TestSupportError("deploy \(host)/\(slot.name): \(answer)") }
                        let done = await progress.wait(timeout: .seconds(120)) { $0.contains { $0.payload.jobID == answer.jobID && $0.payload.state != .running } }
                        guard done, let final = progress.all.first(where: { $0.payload.jobID == answer.jobID && $0.payload.state == .succeeded }) else {
                            throw TestSupportError("deploy \(host)/\(slot.name) did not succeed: \(progress.all.filter { $0.payload.jobID == answer.jobID }.map(\.payload.message))")
                        }
                        run.lock.withLock { slot.mountpoint = final.payload.backendID }
                    }
                }
            }
            try await group.waitForAll()
        }

        let others = run.services.filter { $0.executable != "bynar-disk-manager" }
        for service in others { try service.start() }
        for service in others where !(await born(service)) { throw TestSupportError("\(service.name) did not come up:\n\(service.log.suffix(3000))") }
        let allHealthy = await healths.wait(timeout: .seconds(90)) { received in
            run.slots.allSatisfy { slot in
                received.contains { $0.payload.disk.key == slot.current.key && $0.payload.disk.host == slot.host && $0.payload.state == .healthy && !$0.payload.excluded }
            }
        }
        guard allHealthy else { throw TestSupportError("the detectors did not report every disk HEALTHY within 90 s") }
        run.say("every service up, every disk HEALTHY: chaos starts (a kill every \(options.killEvery) s, a failure every \(options.failEvery) s)")
    } catch {
        run.say("set-up failed: \(error)")
        run.cleanUp()
        return 1
    }

    let chaosStart = Date()
    let chaos = Task { await run.chaosLoop() }
    let failures = Task { await run.failureLoop() }
    let technician = Task { await run.technicianLoop() }

    // Until every failed disk's incident has ended (or the time is up). Chaos stops
    // `chaos_tail` seconds after the last failure; from then on everything stays up.
    let journal = "\(run.work)/central/orc/db/orchestrator.sqlite"
    var timedOut = false
    while true {
        try? await Task.sleep(for: .seconds(2))
        let (injectedAll, last) = run.lock.withLock { (run.injectedAll, run.lastInjection) }
        if injectedAll, let last, Date().timeIntervalSince(last) > options.chaosTail, !run.lock.withLock({ run.stopChaos }) {
            run.lock.withLock { run.stopChaos = true }
            await chaos.value
            run.restartExited()
            run.say("chaos over (\(run.lock.withLock { run.kills.values.reduce(0, +) }) kills); waiting for the repairs to end")
        }
        if injectedAll, run.lock.withLock({ run.stopChaos }) {
            let failedKeys = Set(run.lock.withLock { run.slots.map(\.failedKey) })
            // Every failed disk has an incident, and every incident (of any disk) has ended:
            // RESOLVED, CANCELLED or STUCK (which stays open in the journal for a person).
            let terminal: Set<String> = ["resolved", "cancelled", "stuck"]
            let incidents = Stores.incidents(journal)
            let ended = failedKeys.allSatisfy { key in incidents.contains { $0.diskKey == key && terminal.contains($0.state) } }
            if ended && incidents.allSatisfy({ terminal.contains($0.state) }) { break }
        }
        if Date().timeIntervalSince(run.started) > options.maxSeconds {
            timedOut = true
            run.say("--max-seconds \(Int(options.maxSeconds)) reached: reporting what there is")
            break
        }
    }
    run.lock.withLock { run.stopChaos = true; run.finished = true }
    await chaos.value
    failures.cancel()
    await technician.value
    // Let the last retained messages and closes settle, then stop the services cleanly so
    // their stores are complete.
    try? await Task.sleep(for: .seconds(2))
    for service in run.services { service.stop() }
    if options.pauseAtEnd > 0 {
        run.say("pausing \(options.pauseAtEnd) s before the figures (--pause-at-end)")
        try? await Task.sleep(for: .seconds(options.pauseAtEnd))
    }
    let wall = Date().timeIntervalSince(run.started)
    let figures = Figures.compute(run: run, wall: wall)
    statuses.cancel(); progress.cancel(); healths.cancel()
    await observer.shutdown()

    let real = options.broker == "production"
        ? "mosquitto with the shipped production config (TLS, per-host ACL, persistence autosave 60 s)"
        : "mosquitto (test config, persistence autosave 1 s)"
    print("""

    chaos run: \(options.hosts) hosts, \(options.disks) disks failing one every \(options.failEvery) s, kill -9 every \(options.killEvery) s\(options.killBroker ? " (broker included)" : ""), seed \(options.seed)
      real: \(real); every bynar service binary (debug build; per host a detector and a disk-manager,
            plus one orchestrator, ticketing, notifier); faultfs + loop disks with ext4 managed by the
            disk-managers' filesystem backend; kernel I/O errors
      stand-in: JIRA (Tests/StandIns/jira, follows JIRA REST v2), Slack; the technician is a script
      chaos from \(String(format: "%.0f", chaosStart.timeIntervalSince(run.started))) s (set-up before that is not timed against the targets)
    """)
    for line in figures.lines { print("  " + line) }
    if timedOut { print("  (stopped by --max-seconds: repairs still open count as lost)") }
    if figures.missed.isEmpty {
        print("targets met: 0 duplicate tickets, 0 events lost, 0 STUCK, every disk back, one Remove and one Add per disk")
    } else {
        print("TARGETS MISSED: \(figures.missed.joined(separator: "; "))")
    }
    let keep = options.keep || !figures.missed.isEmpty
    run.cleanUp()
    if keep {
        print("logs and stores kept in \(run.work) (disk images removed)")
    } else {
        try? FileManager.default.removeItem(atPath: run.work)
    }
    return figures.missed.isEmpty ? 0 : 1
}

@main
enum Chaos {
    static func main() async {
        let options: Options
        do { options = try Options.parse(Array(CommandLine.arguments.dropFirst())) } catch let error as OptionError {
            fail(error.message.isEmpty ? Options.usage : "\(error.message)\n\(Options.usage)", code: error.message.isEmpty ? 0 : 64)
        } catch { fail("\(error)", code: 64) }
        guard getuid() == 0 else { fail("needs root (loop devices, mounts, FUSE)", code: 1) }
        for executable in ["bynar-detector", "bynar-disk-manager", "bynar-orchestrator", "bynar-ticketing", "bynar-notifier"]
        where access(builtExecutable(executable), X_OK) != 0 {
            fail("\(builtExecutable(executable)) is missing: run swift build first (scripts/chaos does)", code: 1)
        }
        if let reason = FaultyDisk.unavailableReason { fail("cannot make faultfs disks: \(reason)", code: 1) }
        let work: String
        do { work = try makeTemporaryDirectory(prefix: "bynar-chaos") } catch { fail("\(error)", code: 1) }
        let run = ChaosRun(options: options, work: work)

        // Ctrl-C or SIGTERM (a test timing out) still stops everything and detaches every disk.
        let signalSources = stopOnSignals(run)
        let code = await chaosRun(run, options: options)
        _ = signalSources
        exit(code)
    }

    /// SIGINT and SIGTERM clean up and exit. The handlers run on a dispatch queue, not on the
    /// main actor: declared outside `main`, they do not inherit its isolation (a closure
    /// written inside `main` did, and the runtime's isolation check crashed the run on
    /// Ctrl-C, leaving every service, faultfs and loop device behind).
    nonisolated static func stopOnSignals(_ run: ChaosRun) -> [any DispatchSourceSignal] {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        return [SIGINT, SIGTERM].map { number -> any DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            let stop: @Sendable () -> Void = {
                run.say("signal \(number): stopping everything")
                run.cleanUp()
                run.say("interrupted: logs and stores kept in \(run.work) (disk images removed)")
                exit(130)
            }
            source.setEventHandler(handler: stop)
            source.resume()
            return source
        }
    }
}
