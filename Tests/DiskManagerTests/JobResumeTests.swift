import BynarAuth
import BynarBus
import BynarProto
import BynarStore
import BynarTestSupport
import DiskManager
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

private let loopAvailable = getuid() == 0 && access("/sbin/losetup", X_OK) == 0 && access("/sbin/mkfs.xfs", X_OK) == 0

/// kill -9 of the real disk-manager at every step boundary of Deploy, Remove and Add (the
/// filesystem backend, real loop devices, real xfs, real mosquitto), then a restart: each
/// job ends SUCCEEDED with the disk in its true end state, done once, the retried request
/// answered with the job (not refused as "in progress"), and the host's count of disks out
/// right. The boundaries are test-only pause points (`TEST_DISK_MANAGER_PAUSE_AT`); the
/// kill is a real SIGKILL of the paused process.
@Suite(.serialized, .enabled(if: TestBroker.available && loopAvailable, "needs root, losetup, mkfs.xfs and mosquitto"))
struct JobResumeTests {
    static let deployPoints = ["accepted", "Deploy:1", "Deploy:2", "Deploy:3", "Deploy:done"]
    static let removePoints = ["accepted", "Remove:1", "Remove:2", "Remove:done"]
    static let addPoints = ["accepted", "Add:1", "Add:2", "Add:3", "Add:done"]

    enum Operation: String, Sendable, CaseIterable {
        case deploy = "Deploy", remove = "Remove", add = "Add"
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var operation: Operation
        var point: String
        var testDescription: String { "\(operation.rawValue) killed at \(point)" }
    }

    static let cases: [Case] = deployPoints.map { Case(operation: .deploy, point: $0) } + removePoints.map { Case(operation: .remove, point: $0) }
        + addPoints.map { Case(operation: .add, point: $0) }

    /// One host: a broker, two blank loop disks, an fstab and a mount root of its own, the
    /// disk-manager's store kept across its restarts.
    final class Host: @unchecked Sendable {
        let broker: TestBroker
        let directory: String
        let first: LoopDisk
        let second: LoopDisk
        let fstab: String
        let mountRoot: String
        let bus: Bus
        let line: DiskManagerLine
        var manager: ServiceProcess?

        init() async throws {
            broker = try TestBroker()
            directory = try makeTemporaryDirectory(prefix: "bynar-dm-resume")
            first = try LoopDisk(directory: directory, name: "first", sizeMB: 300)
            second = try LoopDisk(directory: directory, name: "second", sizeMB: 300)
            fstab = directory + "/fstab"
            mountRoot = directory + "/srv"
            try "# test fstab\n".write(toFile: fstab, atomically: true, encoding: .utf8)
            let files = try KeyFiles.generate(keyID: "ops")
            try files.trustedKeysLine.write(toFile: directory + "/trusted-keys", atomically: true, encoding: .utf8)
            bus = try await connectedBus(broker, service: "tester")
            line = try await DiskManagerLine(bus: bus, host: "h1", keyID: "ops", privateKeyText: files.privateKeyFileText)
        }

        /// (Re)starts the disk-manager, pausing at `pause` if given, and waits until it answers.
        func start(pause: String? = nil) async throws {
            manager = try ServiceProcess("bynar-disk-manager", brokerPort: broker.port, directory: directory, extraConfig: """
                "disk_manager": {"trusted_keys_file": "\(directory)/trusted-keys", "max_disks_out": 1,
                                 "filesystem": {"mount_root": "\(mountRoot)", "fstab": "\(fstab)", "filesystem": "xfs"}}
                """, environment: pause.map { ["TEST_DISK_MANAGER_PAUSE_AT": $0] } ?? [:])
            for _ in 0..<100 {
                if (try? await line.send("ready-\(UUID().uuidString)", .list(.init()), timeout: .seconds(1))) != nil { return }
            }
            throw TestFailure("the disk-manager never answered: \(manager?.log ?? "")")
        }

        func kill9() { manager?.signal(SIGKILL) }

        func key(_ disk: LoopDisk) async throws -> String {
            try #require(try await line.disks().first { $0.disk.devPath == disk.device }).disk.key
        }

        /// Runs an operation to its end with no pause (the setup before the case).
        func complete(_ id: String, _ operation: Bynar_V1_DiskManagerRequest.OneOf_Operation) async throws -> Bynar_V1_JobProgress {
            let accepted = try await line.send(id, operation)
            try #require(accepted.outcome == .accepted, "\(accepted)")
            let done = try #require(await line.finished(accepted.jobID, timeout: .seconds(60)), "\(manager?.log ?? "")")
            try #require(done.state == .succeeded, "\(done)")
            return done
        }

        var fstabText: String { (try? String(contentsOfFile: fstab, encoding: .utf8)) ?? "" }

        /// The store's view: jobs by request id and the places out.
        func jobs() throws -> (rows: Int, outKeys: Set<String>) {
            let store = try LocalStore(path: directory + "/db/disk-manager.sqlite")
            let count = try store.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM dm_job") ?? 0 }
            return (count, try JobStore(store: store).outKeys())
        }

        func teardown() async {
            manager?.signal(SIGKILL)
            await bus.shutdown()
            first.teardown()
            second.teardown()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test(.timeLimit(.minutes(10)), arguments: cases)
    func aKilledJobFinishesOnceAfterTheRestart(_ test: Case) async throws {
        let host = try await Host()
        do {
            try await run(test, on: host)
        } catch {
            await host.teardown()
            throw error
        }
        await host.teardown()
    }

    func run(_ test: Case, on host: Host) async throws {
        try await host.start()
        let firstKey = try await host.key(host.first)
        let secondKey = try await host.key(host.second)
        let mountpoint = "\(host.mountRoot)/\(firstKey)"
        let operation: Bynar_V1_DiskManagerRequest.OneOf_Operation
        switch test.operation {
        case .deploy:
            operation = .deploy(.with { $0.disk = .key(firstKey) })
        case .remove:
            _ = try await host.complete("setup-deploy", .deploy(.with { $0.disk = .key(firstKey) }))
            operation = .remove(.with { $0.disk = .key(firstKey) })
        case .add:
            _ = try await host.complete("setup-deploy", .deploy(.with { $0.disk = .key(firstKey) }))
            _ = try await host.complete("setup-remove", .remove(.with { $0.disk = .key(firstKey) }))
            operation = .add(.with { $0.disk = .key(secondKey); $0.reuseOsdID = mountpoint })
        }
        let jobsBefore = try host.jobs().rows

        // The run that dies at the boundary.
        host.kill9()
        try await host.start(pause: test.point)
        let first = try? await host.line.send("case", operation, timeout: test.point == "accepted" ? .seconds(3) : .seconds(30))
        if test.point == "accepted" {
            #expect(first == nil, "paused before the answer: no answer expected, got \(String(describing: first))")
        } else {
            #expect(first?.outcome == .accepted, "\(String(describing: first))")
        }
        let marker = "bynar-pause-point \(test.point) reached"
        var paused = false
        for _ in 0..<300 where !paused {
            paused = host.manager?.log.contains(marker) ?? false
            if !paused { try await Task.sleep(for: .milliseconds(100)) }
        }
        try #require(paused, "never reached \(test.point): \(host.manager?.log.suffix(3000) ?? "")")
        host.kill9()

        // The restart finishes the job; the sender's retry (same request id, signed again)
        // is answered with the job, not refused.
        try await host.start()
        let retry = try await host.line.send("case", operation)
        #expect(retry.outcome == .alreadyDone && retry.originalOutcome == .accepted && retry.jobID == "job-case", "\(retry)")
        let final = try #require(await host.line.finished("job-case", timeout: .seconds(60)), "\(host.manager?.log.suffix(3000) ?? "")")
        #expect(final.state == .succeeded, "\(final)")
        let status = try await host.line.send("status-\(UUID().uuidString)", .jobStatus(.with { $0.jobID = "job-case" }))
        #expect(status.job.state == .succeeded, "the job row agrees: \(status.job)")
        #expect(try host.jobs().rows == jobsBefore + 1, "exactly one job for the request")

        // The world is the end state, done once.
        let jobUUID = try #require(JobRun(id: "job-case", progress: .ignore).filesystemUUID)
        func uuid(_ disk: LoopDisk) throws -> String {
            try FaultyDisk.run("/sbin/blkid", ["-p", "-o", "value", "-s", "UUID", disk.device]).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let mounted = FaultyDisk.mountpoints(of: test.operation == .add ? host.second.device : host.first.device)
        let out = try host.jobs().outKeys
        switch test.operation {
        case .deploy:
            #expect(mounted == [mountpoint], "mounted once at \(mountpoint): \(mounted)")
            #expect(try uuid(host.first) == jobUUID, "the job's filesystem, not a second mkfs")
            #expect(host.fstabText == "# test fstab\nUUID=\(jobUUID) \(mountpoint) xfs defaults,noatime,nofail 0 2\n", "\(host.fstabText)")
            #expect(out.isEmpty, "\(out)")
        case .remove:
            #expect(mounted.isEmpty, "\(mounted)")
            #expect(host.fstabText == "# test fstab\n", "\(host.fstabText)")
            #expect(final.backendID == mountpoint, "\(final)")
            #expect(out == ["filesystem:\(mountpoint)"], "counted out once: \(out)")
            // The limit (1) holds across the restart: nothing else may go out now.
        case .add:
            #expect(mounted == [mountpoint], "\(mounted)")
            #expect(try uuid(host.second) == jobUUID)
            #expect(host.fstabText == "# test fstab\nUUID=\(jobUUID) \(mountpoint) xfs defaults,noatime,nofail 0 2\n", "\(host.fstabText)")
            #expect(out.isEmpty, "put back: nothing counts as out: \(out)")
        }
        let listed = try #require(try await host.line.disks().first { $0.disk.devPath == (test.operation == .add ? host.second.device : host.first.device) })
        #expect(listed.status == (test.operation == .remove ? .blank : .inService) || (test.operation == .remove && listed.status == .unspecified), "\(listed.status)")
        if test.operation == .add {
            // Counted back in: another disk may go out again under max_disks_out 1.
            let removeAgain = try await host.line.send("after-add-remove", .remove(.with { $0.disk = .key(secondKey) }))
            #expect(removeAgain.outcome == .accepted, "the count was released: \(removeAgain)")
            _ = await host.line.finished(removeAgain.jobID, timeout: .seconds(60))
        }
    }
}
