import ArgumentParser
import BynarAuth
import BynarBus
import BynarProto
import FoundationEssentials
import Orchestrator
#if canImport(Glibc)
import Glibc
#endif

struct Deploy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Deploy OSDs on many hosts at once.",
        subcommands: [OSDs.self, Simulator.self]
    )

    struct OSDs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "osds",
            abstract: "Turn blank disks into Ceph OSDs on every host, in parallel.",
            discussion: """
            Lists each host's disks, chooses the BLANK ones (never a system or excluded disk) that
            --devices matches (a shell glob over /dev path, by-path name, key, serial, WWN) or
            the inventory names, and sends a signed Deploy for each. Request ids are
            <run-id>/<host>/<disk-key>: with --journal, running the same command again skips
            what succeeded, follows what was in flight and retries what failed, and never
            deploys a disk twice. Progress on stderr; the final table (or --json) on stdout.
            Exit 0 when nothing failed, 1 otherwise.
            """
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var keyOptions: KeyOptions

        @Option(help: "File of hosts, one per line (# comments).")
        var hosts: String?

        @Option(help: "Device pattern for every host of --hosts, e.g. '/dev/sd[b-z]' or '*'.")
        var devices: String?

        @Option(help: "Instead of --hosts/--devices: lines of 'HOST DEVICE [DEVICE...]'.")
        var inventory: String?

        @Option(help: "Hosts worked on at once.")
        var concurrency = 64

        @Option(name: .customLong("max-in-flight"), help: "Deploy jobs running at once, over all hosts.")
        var maxInFlight = 1024

        @Option(help: "Times a request is sent again after a timeout or an unreachable broker.")
        var retries = 3

        @Option(help: "Seconds before the first retry (doubling, at most 10 s).")
        var backoff: Double = 0.5

        @Option(help: "Journal file (JSON lines); reuse it to resume the run.")
        var journal: String?

        @Flag(help: "Ask the disk-managers what they would do; change nothing.")
        var simulate = false

        @Flag(help: "The final report as JSON.")
        var json = false

        @Option(name: .customLong("request-timeout"), help: "Seconds to wait for each answer.")
        var requestTimeout: Double = 10

        @Option(name: .customLong("job-timeout"), help: "Seconds one deploy may run before it is reported unfinished.")
        var jobTimeout: Double = 1800

        @Option(name: .customLong("progress-interval"), help: "Seconds between progress lines when stderr is not a terminal.")
        var progressInterval: Double = 5

        func validate() throws {
            switch (hosts, devices, inventory) {
            case (.some, .some, nil), (nil, nil, .some): break
            case (_, _, .some): throw ValidationError("--inventory goes alone, without --hosts or --devices")
            case (.some, nil, nil): throw ValidationError("--hosts needs --devices PATTERN")
            case (nil, .some, nil): throw ValidationError("--devices needs --hosts FILE")
            default: throw ValidationError("say where to deploy: --hosts FILE --devices PATTERN, or --inventory FILE")
            }
            if concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
            if maxInFlight < 1 { throw ValidationError("--max-in-flight must be at least 1") }
            if retries < 0 { throw ValidationError("--retries must be 0 or more") }
        }

        func run() async throws {
            try await reportingFailures {
                let plan = try makePlan()
                var options = DeployOptions()
                options.hostConcurrency = concurrency
                options.maxInFlight = maxInFlight
                options.retries = retries
                options.backoffBase = .milliseconds(Int(backoff * 1000))
                options.requestTimeout = .milliseconds(Int(requestTimeout * 1000))
                options.jobTimeout = .milliseconds(Int(jobTimeout * 1000))
                options.simulate = simulate
                let journalFile: DeployJournal
                do { journalFile = try DeployJournal(path: journal) } catch { throw CLIFailure("\(error)", code: CLIFailure.config) }
                try await brokerOptions.withBus(purpose: "deploy osds") { bus in
                    let client = try keyOptions.client(bus: bus)
                    let engine = DeployEngine(client: client, plan: plan, options: options, journal: journalFile)
                    if journalFile.resumed { printError("resuming run \(journalFile.runID) from \(journal ?? "")") }
                    let reporter = Task { await showProgress(engine) }
                    let report = try await engine.run()
                    reporter.cancel()
                    _ = await reporter.value
                    if isatty(2) != 0 { writeAll(2, "\r\u{1B}[K") }
                    printError(engine.progress.line(elapsed: .milliseconds(Int(report.elapsedMs))))
                    emit(json ? report.json() : report.table())
                    for problem in engine.journalProblems { printError("bynar: journal: \(problem)") }
                    if !report.succeeded || !engine.journalProblems.isEmpty { throw ExitCode(CLIFailure.failed) }
                }
            }
        }

        func makePlan() throws -> DeployPlan {
            do {
                if let inventory {
                    return try DeployPlan(inventoryText: try readText(inventory), source: inventory)
                }
                return try DeployPlan(hostsFileText: try readText(hosts ?? ""), devices: devices ?? "", source: hosts ?? "")
            } catch let error as DeployPlan.FileError {
                throw CLIFailure("\(error)", code: 64)
            }
        }

        /// A live bar on a terminal (redrawn 10 times a second), else a line every
        /// --progress-interval seconds.
        func showProgress(_ engine: DeployEngine) async {
            let clock = ContinuousClock()
            let started = clock.now
            let terminal = isatty(2) != 0
            let interval: Duration = terminal ? .milliseconds(100) : .milliseconds(Int(progressInterval * 1000))
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if Task.isCancelled { break }
                let line = engine.progress.line(elapsed: clock.now - started)
                if terminal { writeAll(2, "\r\u{1B}[K" + line) } else { printError(line) }
            }
        }
    }

    struct Simulator: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve simulated disk-managers for many hosts (to rehearse a deploy; changes nothing).",
            discussion: """
            Answers signed commands on bynar/v1/dm/{host}/cmd for each simulated host like a
            disk-manager: one system disk and --disks-per-host blank disks per host, jobs that
            take --job-seconds. Runs until interrupted.
            """
        )

        @OptionGroup var brokerOptions: BrokerOptions

        @Option(help: "File of host names to simulate (one per line).")
        var hosts: String?

        @Option(name: .customLong("host-count"), help: "Without --hosts: simulate this many hosts, named PREFIX001...")
        var hostCount = 10

        @Option(name: .customLong("host-prefix"), help: "Prefix of generated host names.")
        var hostPrefix = "sim"

        @Option(name: .customLong("disks-per-host"), help: "Blank disks on each host.")
        var disksPerHost = 10

        @Option(name: .customLong("job-seconds"), help: "How long each Deploy/Remove/Add job takes.")
        var jobSeconds: Double = 1

        @Option(name: .customLong("trusted-keys"), help: "Trusted-keys file (lines from `bynar keys generate`).")
        var trustedKeys: String

        @Option(name: .customLong("fail"), help: "HOST or HOST/DISK-KEY whose jobs end FAILED (repeat).")
        var failures: [String] = []

        func run() async throws {
            try await reportingFailures {
                let names: [String]
                if let hosts {
                    names = try DeployPlan(hostsFileText: try readText(hosts), devices: "*", source: hosts).hosts.map(\.name)
                } else {
                    names = DiskManagerSimulator.hostNames(prefix: hostPrefix, count: hostCount)
                }
                let keys: TrustedKeys
                do { keys = try TrustedKeys(path: trustedKeys) } catch { throw CLIFailure("\(trustedKeys): \(error)", code: CLIFailure.config) }
                let bus = try await brokerOptions.connect(purpose: "deploy simulator")
                let simulator = try DiskManagerSimulator(bus: bus, hosts: names, disksPerHost: disksPerHost,
                                                         jobDuration: .milliseconds(Int(jobSeconds * 1000)), trustedKeys: keys)
                for failure in failures {
                    let parts = failure.split(separator: "/", maxSplits: 1).map(String.init)
                    simulator.failJobs(host: parts[0], disk: parts.count > 1 ? parts[1] : nil)
                }
                try await simulator.start()
                emit("simulating \(names.count) hosts (\(names.first ?? "")...\(names.last ?? "")), \(disksPerHost) blank disks each, jobs of \(jobSeconds) s: ready")
                while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
            }
        }
    }
}

/// The whole text of a file, or a failure naming it.
func readText(_ path: String) throws -> String {
    do {
        let data = try Data(contentsOf: URL(filePath: path))
        return String(decoding: data, as: UTF8.self)
    } catch {
        throw CLIFailure("cannot read \(path): \(error)", code: 66)
    }
}
