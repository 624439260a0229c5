public import BynarAuth
public import BynarBus
public import BynarProto
import BynarStore
import Synchronization

/// Simulated disk-managers for many hosts on one bus connection: for rehearsing a deploy
/// (`bynar deploy simulator`), for the deploy tests and for the deploy benchmark. It is
/// not a disk-manager: nothing on this machine changes, and it says so in every job's
/// message ("simulated").
///
/// It speaks the real protocol: commands on `bynar/v1/dm/{host}/cmd` for each simulated
/// host, signatures checked with ``CommandVerifier`` against the trusted keys (nonces in
/// memory), a repeated request id answered ALREADY_DONE with the first outcome and job id,
/// List, SafeToRemove, JobStatus answered at once, Deploy / Remove / Add answered ACCEPTED
/// with a job whose JobProgress goes RUNNING, then SUCCEEDED (or FAILED, on demand) after
/// the job duration, and `simulate` answered with the steps and no change.
///
/// Each host has one system disk (`/dev/sda`, in service, never deployable) and
/// `disksPerHost` blank disks (`/dev/sdb`...).
public final class DiskManagerSimulator: Sendable {
    /// Steps a Deploy job reports.
    public static let deploySteps = ["check disk is blank", "ceph-volume lvm create", "start ceph-osd"]
    public static let removeSteps = ["ceph osd out", "wait for safe-to-destroy", "stop ceph-osd", "ceph osd destroy"]
    public static let addSteps = ["check disk is blank", "ceph-volume lvm create --osd-id", "start ceph-osd"]

    private struct Host {
        var disks: [Bynar_V1_ManagedDisk]
        var jobs: [String: Bynar_V1_JobProgress] = [:]
        var answers: [String: Bynar_V1_DiskManagerResponse] = [:]
        var nextJob = 0
        var dropNext = 0
        var failJobs = false
        var failingDisks: Set<String> = []
    }
    private struct State {
        var hosts: [String: Host] = [:]
        var nextOSD = 0
        var jobDuration: Duration
        var started: [String: Int] = [:]
        var requests = 0
    }

    public let bus: Bus
    private let verifier: CommandVerifier
    private let state: Mutex<State>
    private let server = Mutex<Task<Void, Never>?>(nil)

    /// `hosts` with `disksPerHost` blank disks each; jobs take `jobDuration`; commands must
    /// be signed by one of `trustedKeys`.
    public convenience init(bus: Bus, hosts: [String], disksPerHost: Int, jobDuration: Duration, trustedKeys: TrustedKeys) throws {
        try self.init(bus: bus, disks: Dictionary(uniqueKeysWithValues: hosts.map { host in
            (host, (0...disksPerHost).map { Self.disk(host: host, index: $0) })
        }), jobDuration: jobDuration, trustedKeys: trustedKeys)
    }

    /// Hosts with exactly these disks (for example a real disk-manager's List answer, so the
    /// contract test can send both the same requests).
    public init(bus: Bus, disks: [String: [Bynar_V1_ManagedDisk]], jobDuration: Duration, trustedKeys: TrustedKeys) throws {
        self.bus = bus
        let store = try LocalStore(path: ":memory:", migrations: CommandVerifier.migrations)
        verifier = CommandVerifier(trustedKeys: trustedKeys, store: store)
        var initial = State(jobDuration: jobDuration)
        for (host, list) in disks { initial.hosts[host] = Host(disks: list) }
        initial.nextOSD = disks.values.flatMap { $0 }.compactMap { Int($0.backendID) }.max().map { $0 + 1 } ?? 0
        state = Mutex(initial)
    }

    /// Host names `prefix001`, `prefix002`, ... (as many digits as `count` needs, at least 3).
    public static func hostNames(prefix: String, count: Int) -> [String] {
        let width = max(3, String(count).count)
        return (1...max(1, count)).map { index in
            let digits = String(index)
            return prefix + String(repeating: "0", count: width - digits.count) + digits
        }
    }

    /// Subscribes to every host's command topic and serves until ``stop()``.
    public func start() async throws {
        let commands = try await bus.subscribe(Topics.diskManagerCommands(host: "+"), as: Bynar_V1_DiskManagerRequest.self, buffer: 1 << 16)
        let task = Task { [weak self] in
            for await command in commands {
                guard let self else { return }
                Task { self.serve(command) }
            }
        }
        server.withLock { $0 = task }
    }

    /// Stops serving (jobs already running still finish).
    public func stop() { server.withLock { $0?.cancel() } }

    deinit { server.withLock { $0?.cancel() } }

    // MARK: Failure injection and inspection

    /// Jobs on `host` (only on `disk` when given) end FAILED until ``clearFailures()``.
    public func failJobs(host: String, disk: String? = nil) {
        state.withLock { state in
            if let disk { state.hosts[host]?.failingDisks.insert(disk) } else { state.hosts[host]?.failJobs = true }
        }
    }

    /// Jobs succeed again everywhere.
    public func clearFailures() {
        state.withLock { state in
            for name in state.hosts.keys {
                state.hosts[name]?.failJobs = false
                state.hosts[name]?.failingDisks = []
            }
        }
    }

    /// The next `count` commands for `host` get no answer (as when its disk-manager is
    /// restarting): the caller times out.
    public func dropRequests(host: String, count: Int) {
        state.withLock { $0.hosts[host]?.dropNext = count }
    }

    /// How long jobs started from now take.
    public func setJobDuration(_ duration: Duration) {
        state.withLock { $0.jobDuration = duration }
    }

    /// How many jobs were started for `disk` on `host` (a request id answered ALREADY_DONE
    /// starts none).
    public func jobsStarted(host: String, disk: String) -> Int {
        state.withLock { $0.started["\(host)/\(disk)"] ?? 0 }
    }

    /// Jobs started per "host/disk".
    public var jobsStartedByDisk: [String: Int] { state.withLock { $0.started } }

    /// Commands received (answered or dropped).
    public var requestsReceived: Int { state.withLock { $0.requests } }

    /// The disks of `host` as List would answer.
    public func disks(of host: String) -> [Bynar_V1_ManagedDisk] {
        state.withLock { $0.hosts[host]?.disks ?? [] }
    }

    // MARK: Serving

    private func serve(_ command: Received<Bynar_V1_DiskManagerRequest>) {
        let parts = command.topic.split(separator: "/")
        guard parts.count == 5 else { return }
        let host = String(parts[3])
        let request = command.payload
        let served = state.withLock { state -> Bool in
            state.requests += 1
            guard state.hosts[host] != nil else { return false }
            if state.hosts[host]!.dropNext > 0 {
                state.hosts[host]!.dropNext -= 1
                return false
            }
            return true
        }
        guard served else { return }
        // Outside the lock: signature checks of many hosts' commands run side by side, as
        // they would on many machines.
        let verification = request.host == host ? verifier.verify(request, nowMs: Bus.nowUnixMs()) : nil
        let outcome = state.withLock { answer(request, host: host, verification: verification, state: &$0) }
        guard let response = outcome.0 else { return }
        Task {
            try? await self.bus.reply(to: command, with: response, asHost: host, service: "disk-manager")
            if let job = outcome.1 {
                try? await self.bus.publish(job, to: Topics.diskManagerProgress(host: host))
                let duration = self.state.withLock { $0.jobDuration }
                try? await Task.sleep(for: duration)
                if let final = self.finish(job) {
                    try? await self.bus.publish(final, to: Topics.diskManagerProgress(host: host))
                }
            }
        }
    }

    private func answer(
        _ request: Bynar_V1_DiskManagerRequest, host name: String, verification: Result<VerifiedCommand, CommandRejection>?, state: inout State
    ) -> (Bynar_V1_DiskManagerResponse?, Bynar_V1_JobProgress?) {
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = name
        response.simulated = request.simulate
        func refuse(_ reason: String) -> (Bynar_V1_DiskManagerResponse?, Bynar_V1_JobProgress?) {
            response.outcome = .refused
            response.reason = reason
            return (response, nil)
        }
        guard request.host == name, let verification else { return refuse("the request is for host \"\(request.host)\", this is \"\(name)\"") }
        if case .failure(let why) = verification {
            return refuse("not authorised: \(why)")
        }
        if let first = state.hosts[name]!.answers[request.requestID] {
            var again = first
            again.originalOutcome = first.outcome
            again.outcome = .alreadyDone
            return (again, nil)
        }
        var job: Bynar_V1_JobProgress?
        defer { state.hosts[name]!.answers[request.requestID] = response }
        let disks = state.hosts[name]!.disks
        switch request.operation {
        case .list?:
            response.outcome = .success
            response.diskList.disks = disks
            response.steps = ["list \(disks.count) disks (simulated)"]
            return (response, nil)
        case .jobStatus(let status)?:
            guard let progress = state.hosts[name]!.jobs[status.jobID] else { return refuse("no job \"\(status.jobID)\" on \(name)") }
            response.outcome = .success
            response.job = progress
            return (response, nil)
        case nil:
            return refuse("the request names no operation")
        default:
            break
        }
        let selector = RequestSelector.of(request)
        guard let index = disks.firstIndex(where: { Self.matches($0.disk, selector) }) else {
            return refuse("no disk on \(name) matches the selector")
        }
        let disk = disks[index]
        let operation: String
        let steps: [String]
        switch request.operation {
        case .safeToRemove?:
            var answer = Bynar_V1_DiskManagerResponse.SafeToRemove()
            answer.safe = disk.status == .inService || disk.status == .removed
            answer.detail = answer.safe ? "osd.\(disk.backendID) can go: no placement group would lose its last copy (simulated)" : "disk is \(DiskStatusName.of(disk.status)), not an OSD"
            answer.clusterHealth = "HEALTH_OK"
            response.outcome = .success
            response.safeToRemove = answer
            return (response, nil)
        case .deploy?:
            guard !disk.systemDisk else { return refuse("\(disk.disk.devPath) is a system disk") }
            guard disk.status == .blank else { return refuse("\(disk.disk.devPath) is \(DiskStatusName.of(disk.status)), not BLANK") }
            operation = "Deploy"
            steps = Self.deploySteps
        case .remove?:
            guard disk.status == .inService, !disk.systemDisk else { return refuse("\(disk.disk.devPath) is not an OSD in service") }
            operation = "Remove"
            steps = Self.removeSteps
        case .add(let add)?:
            // As the real disk-manager (CephDiskBackend.add): Add re-uses a destroyed id on a
            // blank disk; anything else is refused (contract-tested in CephServiceTests).
            guard !add.reuseOsdID.isEmpty else { return refuse("Add needs reuse_osd_id (the id the Remove answered); use Deploy for a new member") }
            guard !disk.systemDisk else { return refuse("\(disk.disk.devPath) is a system disk") }
            guard state.hosts[name]!.disks.contains(where: { $0.status == .removed && $0.backendID == add.reuseOsdID }) else {
                return refuse("osd.\(add.reuseOsdID) is not destroyed; only a destroyed id can be re-used")
            }
            // The removed disk itself is blank again for the real one (wipe_after_destroy).
            guard disk.status == .blank || (disk.status == .removed && disk.backendID == add.reuseOsdID) else {
                return refuse("\(disk.disk.devPath) is \(DiskStatusName.of(disk.status)), not BLANK")
            }
            operation = "Add"
            steps = Self.addSteps
            state.hosts[name]!.disks[index].backendID = add.reuseOsdID
        default:
            return refuse("unsupported operation")
        }
        if request.simulate {
            response.outcome = .success
            response.steps = steps
            return (response, nil)
        }
        state.hosts[name]!.nextJob += 1
        let jobID = "sim-job-\(state.hosts[name]!.nextJob)"
        state.started["\(name)/\(disk.disk.key)", default: 0] += 1
        state.hosts[name]!.disks[index].status = .busy
        var progress = Bynar_V1_JobProgress()
        progress.jobID = jobID
        progress.requestID = request.requestID
        progress.host = name
        progress.disk = .key(disk.disk.key)
        progress.operation = operation
        progress.backend = "ceph"
        progress.step = steps[0]
        progress.stepIndex = 1
        progress.stepCount = UInt32(steps.count)
        progress.state = .running
        progress.message = "\(operation) of \(disk.disk.devPath) (simulated)"
        progress.updatedUnixMs = Bus.nowUnixMs()
        state.hosts[name]!.jobs[jobID] = progress
        job = progress
        response.outcome = .accepted
        response.jobID = jobID
        response.backend = "ceph"
        return (response, job)
    }

    /// Ends a job: SUCCEEDED with the disk's new status, or FAILED when asked to.
    private func finish(_ job: Bynar_V1_JobProgress) -> Bynar_V1_JobProgress? {
        state.withLock { state -> Bynar_V1_JobProgress? in
            guard var host = state.hosts[job.host],
                  let index = host.disks.firstIndex(where: { $0.disk.key == job.disk.key }) else { return nil }
            var final = job
            final.updatedUnixMs = Bus.nowUnixMs()
            let steps = job.operation == "Deploy" ? Self.deploySteps : job.operation == "Remove" ? Self.removeSteps : Self.addSteps
            if host.failJobs || host.failingDisks.contains(job.disk.key) {
                final.state = .failed
                final.outcome = .failed
                final.failedStep = steps[1]
                final.steps = [steps[0]]
                final.message = "\(steps[1]) failed (simulated failure)"
                host.disks[index].status = job.operation == "Remove" ? .inService : .blank
            } else {
                final.state = .succeeded
                final.outcome = .success
                final.steps = steps
                final.step = steps[steps.count - 1]
                final.stepIndex = UInt32(steps.count)
                switch job.operation {
                case "Remove":
                    host.disks[index].status = .removed
                    final.backendID = host.disks[index].backendID
                case "Add" where !host.disks[index].backendID.isEmpty:
                    let id = host.disks[index].backendID
                    // The removed disk no longer names the id (the real one's label names
                    // a uuid the cluster has forgotten).
                    for other in host.disks.indices where other != index && host.disks[other].backendID == id {
                        host.disks[other].backendID = ""
                        host.disks[other].backend = ""
                    }
                    host.disks[index].status = .inService
                    final.backendID = id
                default:
                    host.disks[index].status = .inService
                    host.disks[index].backendID = String(state.nextOSD)
                    state.nextOSD += 1
                    final.backendID = host.disks[index].backendID
                }
                host.disks[index].backend = "ceph"
                final.message = "\(job.operation) done (simulated): osd.\(final.backendID)"
            }
            host.jobs[job.jobID] = final
            state.hosts[job.host] = host
            return final
        }
    }

    static func matches(_ disk: Bynar_V1_DiskIdentity, _ selector: Bynar_V1_DiskSelector) -> Bool {
        let checks: [(String, String)] = [
            (selector.key, disk.key), (selector.wwn, disk.wwn), (selector.serial, disk.serial),
            (selector.byPath, disk.byPath), (selector.devPath, disk.devPath),
        ]
        let given = checks.filter { !$0.0.isEmpty }
        return !given.isEmpty && given.allSatisfy { $0.0 == $0.1 }
    }

    static func disk(host: String, index: Int) -> Bynar_V1_ManagedDisk {
        var identity = Bynar_V1_DiskIdentity()
        identity.host = host
        identity.serial = "SIM\(host.uppercased().filter { $0.isLetter || $0.isNumber })D\(index)"
        identity.key = "serial-" + identity.serial
        identity.model = "SIMULATED 4TB"
        identity.vendor = "BYNAR"
        identity.devPath = "/dev/sd" + Self.letters(index)
        identity.byPath = "/dev/disk/by-path/pci-0000:3b:00.0-sas-phy\(index)-lun-0"
        identity.sizeBytes = 4_000_787_030_016
        identity.rotational = true
        identity.transport = .scsi
        var disk = Bynar_V1_ManagedDisk()
        disk.disk = identity
        if index == 0 {
            disk.systemDisk = true
            disk.status = .inService
            disk.backend = "filesystem"
            disk.backendID = "/"
        } else {
            disk.status = .blank
        }
        return disk
    }

    /// sda, sdb, ..., sdz, sdaa, ...
    static func letters(_ index: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz")
        var n = index
        var out = ""
        repeat {
            out = String(alphabet[n % 26]) + out
            n = n / 26 - 1
        } while n >= 0
        return out
    }
}

/// The disk selector of a request that names one.
enum RequestSelector {
    static func of(_ request: Bynar_V1_DiskManagerRequest) -> Bynar_V1_DiskSelector {
        switch request.operation {
        case .safeToRemove(let op)?: op.disk
        case .remove(let op)?: op.disk
        case .add(let op)?: op.disk
        case .deploy(let op)?: op.disk
        default: Bynar_V1_DiskSelector()
        }
    }
}
