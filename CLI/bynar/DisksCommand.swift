import ArgumentParser
import BynarAuth
import BynarBus
import BynarProto
import Orchestrator
import SwiftProtobuf

struct Disks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask hosts' disk-managers about their disks and change them (signed commands).",
        subcommands: [List.self, SafeToRemove.self, Remove.self, Add.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the disks of hosts, as their disk-managers see them.",
            discussion: "Without --host: every host whose disk-manager's retained birth says it is up."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var keyOptions: KeyOptions

        @Option(name: .customLong("host"), help: "A host to ask (repeat for more).")
        var hosts: [String] = []

        @Flag(help: "JSON lines (one ManagedDisk each) instead of a table.")
        var json = false

        @Option(name: .customLong("request-timeout"), help: "Seconds to wait for each host's answer.")
        var requestTimeout: Double = 10

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "disks list") { bus in
                    let client = try keyOptions.client(bus: bus)
                    var targets = hosts
                    if targets.isEmpty {
                        let births = payloads(try await collectRetained(bus, filters: [Topics.serviceStatus(host: "+", service: "disk-manager")], cap: .seconds(5)), as: Bynar_V1_ServiceStatus.self)
                        targets = births.map(\.payload).filter { $0.state == .birth }.map(\.host).sorted()
                        guard !targets.isEmpty else {
                            throw CLIFailure("no disk-manager is up (no retained birth on \(Topics.serviceStatus(host: "+", service: "disk-manager"))); name hosts with --host")
                        }
                    }
                    let timeout = Duration.milliseconds(Int(requestTimeout * 1000))
                    let answers = await withTaskGroup(of: (String, Result<Bynar_V1_DiskManagerResponse, any Error>).self) { group in
                        for host in targets {
                            group.addTask {
                                do { return (host, .success(try await client.send(.list(.init()), to: host, timeout: timeout))) } catch {
                                    return (host, .failure(error))
                                }
                            }
                        }
                        var all: [(String, Result<Bynar_V1_DiskManagerResponse, any Error>)] = []
                        for await answer in group { all.append(answer) }
                        return all.sorted { $0.0 < $1.0 }
                    }
                    var failures: [CLIFailure] = []
                    var rows: [[String]] = []
                    for (host, answer) in answers {
                        switch answer {
                        case .failure(let error):
                            failures.append(CLIFailure(error, talkingTo: "disk-manager on \(host)"))
                        case .success(let response):
                            guard response.outcome == .success else {
                                failures.append(CLIFailure(refusal(response, operation: "List", host: host)))
                                continue
                            }
                            for disk in response.diskList.disks {
                                if json {
                                    emit((try? disk.jsonString()) ?? "{}")
                                } else {
                                    rows.append(diskRow(host: host, disk))
                                }
                            }
                        }
                    }
                    if !json {
                        emit(TextTable.render(header: ["HOST", "DISK", "DEVICE", "SIZE", "MODEL", "STATUS", "BACKEND", "FLAGS"], rows: rows))
                    }
                    for failure in failures { printError("bynar: \(failure.description)") }
                    if let worst = failures.map(\.code).max() { throw ExitCode(worst) }
                }
            }
        }

        func diskRow(host: String, _ disk: Bynar_V1_ManagedDisk) -> [String] {
            let flags = [disk.systemDisk ? "system" : nil, disk.excluded ? "excluded" : nil].compactMap { $0 }.joined(separator: ",")
            let backend = disk.backend.isEmpty ? "-" : "\(disk.backend) \(disk.backendID)"
            return [host, disk.disk.key, disk.disk.devPath.isEmpty ? "-" : disk.disk.devPath, size(disk.disk.sizeBytes),
                    disk.disk.model.isEmpty ? "-" : disk.disk.model, DiskStatusName.of(disk.status), backend, flags.isEmpty ? "-" : flags]
        }
    }

    /// Which disk, on which host.
    struct DiskOptions: ParsableArguments {
        @Option(help: "The host whose disk-manager acts.")
        var host: String

        @Option(help: "The disk: its key (WWN or serial-...), a /dev path, or a /dev/disk/by-path path.")
        var disk: String

        @Flag(help: "Ask what would be done; change nothing.")
        var simulate = false

        @Option(name: .customLong("request-id"), help: "Request id (default: a new one). Send the same id again to resume without acting twice.")
        var requestID: String?

        @Option(name: .customLong("request-timeout"), help: "Seconds to wait for the answer.")
        var requestTimeout: Double = 30

        @Flag(help: "JSON instead of text.")
        var json = false

        var selector: Bynar_V1_DiskSelector {
            var selector = Bynar_V1_DiskSelector()
            if disk.hasPrefix("/dev/disk/by-path/") {
                selector.byPath = disk
            } else if disk.hasPrefix("/dev/") {
                selector.devPath = disk
            } else {
                selector.key = disk
            }
            return selector
        }
    }

    struct SafeToRemove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "safe-to-remove",
            abstract: "Ask whether a disk can be taken out without losing data (exit 0 safe, 3 not safe)."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var keyOptions: KeyOptions
        @OptionGroup var diskOptions: DiskOptions

        func run() async throws {
            try await reportingFailures {
                try await brokerOptions.withBus(purpose: "disks safe-to-remove") { bus in
                    let client = try keyOptions.client(bus: bus)
                    var operation = Bynar_V1_DiskManagerRequest.SafeToRemove()
                    operation.disk = diskOptions.selector
                    let response = try await send(client, .safeToRemove(operation), options: diskOptions, name: "SafeToRemove")
                    guard response.outcome == .success else { throw CLIFailure(refusal(response, operation: "SafeToRemove", host: diskOptions.host)) }
                    let answer = response.safeToRemove
                    if diskOptions.json {
                        emit((try? response.jsonString()) ?? "{}")
                    } else {
                        emit("\(answer.safe ? "safe" : "NOT safe") to remove \(diskOptions.disk) on \(diskOptions.host)\(answer.clusterHealth.isEmpty ? "" : " (cluster \(answer.clusterHealth))")")
                        if !answer.detail.isEmpty { emit(answer.detail) }
                    }
                    if !answer.safe { throw ExitCode(CLIFailure.notSafe) }
                }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take a disk out of service (Ceph: out, wait until safe, destroy the OSD keeping its id).",
            discussion: "Prints the OSD id to give `bynar disks add --reuse-osd-id` for the replacement disk."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var keyOptions: KeyOptions
        @OptionGroup var diskOptions: DiskOptions

        @OptionGroup var jobOptions: JobOptions

        func run() async throws {
            try await reportingFailures {
                var operation = Bynar_V1_DiskManagerRequest.Remove()
                operation.disk = diskOptions.selector
                try await runJob(.remove(operation), name: "Remove", broker: brokerOptions, key: keyOptions, options: diskOptions, wait: jobOptions.wait, jobTimeout: jobOptions.jobTimeout)
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put a (new) disk into service, optionally recreating a removed OSD id."
        )

        @OptionGroup var brokerOptions: BrokerOptions
        @OptionGroup var keyOptions: KeyOptions
        @OptionGroup var diskOptions: DiskOptions

        @Option(name: .customLong("reuse-osd-id"), help: "Recreate this OSD id (from `bynar disks remove`), so data moves once.")
        var reuseOsdID: String?

        @OptionGroup var jobOptions: JobOptions

        func run() async throws {
            try await reportingFailures {
                var operation = Bynar_V1_DiskManagerRequest.Add()
                operation.disk = diskOptions.selector
                if let reuseOsdID { operation.reuseOsdID = reuseOsdID }
                try await runJob(.add(operation), name: "Add", broker: brokerOptions, key: keyOptions, options: diskOptions, wait: jobOptions.wait, jobTimeout: jobOptions.jobTimeout)
            }
        }
    }
}

/// Sends one command for `options.host`, turning bus errors into CLI failures.
private func send(_ client: DiskManagerClient, _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, options: Disks.DiskOptions, name: String) async throws -> Bynar_V1_DiskManagerResponse {
    do {
        return try await client.send(operation, to: options.host, requestID: options.requestID, simulate: options.simulate,
                                     timeout: .milliseconds(Int(options.requestTimeout * 1000)))
    } catch {
        throw CLIFailure(error, talkingTo: "\(name) on \(options.host) (disk-manager)")
    }
}

/// Sends a Remove or Add and, with `wait`, follows its job to the end (progress on stderr).
private func runJob(_ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation, name: String, broker: BrokerOptions, key: KeyOptions,
                    options: Disks.DiskOptions, wait: Bool, jobTimeout: Double) async throws {
    try await broker.withBus(purpose: "disks \(name.lowercased())") { bus in
        let client = try key.client(bus: bus)
        // Subscribed before sending, so a fast job's progress is not missed.
        let follower = try await JobFollower(bus: bus, filter: Topics.diskManagerProgress(host: options.host)) { progress in
            if !options.json { printError("\(progress.host): \(progress.operation) step \(progress.stepIndex)/\(progress.stepCount): \(progress.step)") }
        }
        defer { follower.stop() }
        let response = try await send(client, operation, options: options, name: name)
        switch response.outcome {
        case .accepted, .alreadyDone where !response.jobID.isEmpty:
            break
        case .success where response.simulated:
            if options.json { emit((try? response.jsonString()) ?? "{}") } else {
                emit("\(name) of \(options.disk) on \(options.host) would do (simulated, nothing changed):")
                for step in response.steps { emit("  \(step)") }
            }
            return
        default:
            throw CLIFailure(refusal(response, operation: name, host: options.host))
        }
        guard wait else {
            if options.json { emit((try? response.jsonString()) ?? "{}") } else {
                emit("\(name) of \(options.disk) on \(options.host) accepted: job \(response.jobID) (request \(response.requestID))")
            }
            return
        }
        if !options.json { printError("\(name) of \(options.disk) on \(options.host): job \(response.jobID) \(response.outcome == .alreadyDone ? "(sent before)" : "accepted")") }
        let final = await follower.follow(
            jobID: response.jobID, host: options.host, client: client, pollInterval: .seconds(5),
            requestTimeout: .milliseconds(Int(options.requestTimeout * 1000)), deadline: .now + .milliseconds(Int(jobTimeout * 1000))
        )
        guard let final else {
            throw CLIFailure("\(name) job \(response.jobID) on \(options.host) did not finish within \(Int(jobTimeout)) s; it goes on (follow it with the same --request-id \(response.requestID))")
        }
        if options.json { emit((try? final.jsonString()) ?? "{}") }
        guard final.state == .succeeded else {
            throw CLIFailure("\(name) of \(options.disk) on \(options.host) FAILED at step \"\(final.failedStep)\": \(final.message)")
        }
        if !options.json {
            var line = "\(name) of \(options.disk) on \(options.host) succeeded"
            if !final.backendID.isEmpty { line += ": osd \(final.backendID)" }
            if name == "Remove" && !final.backendID.isEmpty { line += " (re-add with --reuse-osd-id \(final.backendID))" }
            emit(line)
        }
    }
}

/// "<op> on <host> REFUSED: reason (failed step: x)".
func refusal(_ response: Bynar_V1_DiskManagerResponse, operation: String, host: String) -> String {
    var text = "\(operation) on \(host) \(response.outcome.name)"
    if response.outcome == .alreadyDone { text += " (first outcome \(response.originalOutcome.name))" }
    text += ": \(response.reason.isEmpty ? "no reason given" : response.reason)"
    if !response.failedStep.isEmpty { text += " (failed step: \(response.failedStep))" }
    return text
}

/// How Remove and Add follow their job.
struct JobOptions: ParsableArguments {
    @Flag(inversion: .prefixedNo, help: "Follow the job until it ends.")
    var wait = true

    @Option(name: .customLong("job-timeout"), help: "Seconds to follow the job before giving up (the job goes on).")
    var jobTimeout: Double = 3600
}

/// Bytes as "4.0 TB", "512 GB".
func size(_ bytes: UInt64) -> String {
    guard bytes > 0 else { return "-" }
    let units = ["B", "KB", "MB", "GB", "TB", "PB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}
