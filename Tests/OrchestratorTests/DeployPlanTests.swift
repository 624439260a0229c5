import BynarProto
import Foundation
import Orchestrator
import Testing

/// The deploy plan, the journal and the options: pure logic, no broker.
struct DeployPlanTests {
    func disk(_ dev: String, key: String, status: Bynar_V1_ManagedDisk.Status = .blank, system: Bool = false, excluded: Bool = false) -> Bynar_V1_ManagedDisk {
        var disk = Bynar_V1_ManagedDisk()
        disk.disk.devPath = dev
        disk.disk.key = key
        disk.disk.serial = String(key.dropFirst("serial-".count))
        disk.disk.byPath = "/dev/disk/by-path/pci-0000:00:1f.2-ata-\(dev.suffix(1))"
        disk.status = status
        disk.systemDisk = system
        disk.excluded = excluded
        return disk
    }

    @Test func hostsFileSkipsCommentsAndNamesBadLines() throws {
        let plan = try DeployPlan(hostsFileText: "# storage\nh1\n\n  h2   # second\r\nh3\n", devices: "/dev/sd*")
        #expect(plan.hosts.map(\.name) == ["h1", "h2", "h3"])
        #expect(plan.hosts.allSatisfy { $0.patterns.map(\.text) == ["/dev/sd*"] })
        #expect(throws: DeployPlan.FileError(source: "hosts file", line: 2, problem: "expected one host name, found 2 fields")) {
            try DeployPlan(hostsFileText: "h1\nh2 h3\n", devices: "*")
        }
        #expect(throws: DeployPlan.FileError(source: "hosts file", line: 0, problem: "no hosts")) {
            try DeployPlan(hostsFileText: "# nothing\n", devices: "*")
        }
        #expect(throws: DeployPlan.FileError.self) { try DeployPlan(hostsFileText: "a/b\n", devices: "*") }
        #expect(throws: DeployPlan.FileError.self) { try DeployPlan(hostsFileText: "h1\n", devices: "") }
    }

    @Test func inventoryAddsUpDevicesPerHost() throws {
        let plan = try DeployPlan(inventoryText: "h1 /dev/sdb /dev/sdc\nh2 *\nh1 serial-X\n")
        #expect(plan.hosts.map(\.name) == ["h1", "h2"])
        #expect(plan.hosts[0].patterns.map(\.text) == ["/dev/sdb", "/dev/sdc", "serial-X"])
        #expect(throws: DeployPlan.FileError(source: "inventory file", line: 1, problem: "expected \"HOST DEVICE [DEVICE...]\", found 1 field")) {
            try DeployPlan(inventoryText: "h1\n")
        }
    }

    @Test func onlyBlankNonSystemNonExcludedDisksTheyMatchAreChosen() throws {
        let disks = [
            disk("/dev/sda", key: "serial-A", status: .inService, system: true),
            disk("/dev/sdb", key: "serial-B"),
            disk("/dev/sdc", key: "serial-C", status: .inService),
            disk("/dev/sdd", key: "serial-D", excluded: true),
            disk("/dev/sde", key: "serial-E"),
        ]
        func chosen(_ patterns: [String]) throws -> [String] {
            DeployPlan.candidates(disks, patterns: try patterns.map { try DevicePattern($0) }).map(\.disk.devPath)
        }
        #expect(try chosen(["*"]) == ["/dev/sdb", "/dev/sde"])
        #expect(try chosen(["/dev/sd[a-c]"]) == ["/dev/sdb"])
        #expect(try chosen(["serial-E"]) == ["/dev/sde"])
        #expect(try chosen(["E"]) == ["/dev/sde"], "serial")
        #expect(try chosen(["pci-0000:00:1f.2-ata-b"]) == ["/dev/sdb"], "by-path name without /dev/disk/by-path/")
        #expect(try chosen(["/dev/disk/by-path/*-ata-e"]) == ["/dev/sde"])
        #expect(try chosen(["/dev/sdz"]).isEmpty)

        let unmatched = DeployPlan.unmatchedLiterals(disks, patterns: try ["/dev/sdc", "/dev/sdz", "/dev/sda", "/dev/sd?"].map { try DevicePattern($0) })
        #expect(unmatched.map(\.pattern) == ["/dev/sdc", "/dev/sdz", "/dev/sda"])
        #expect(unmatched[0].reason == "not deployable: status IN_SERVICE, not BLANK")
        #expect(unmatched[1].disk == nil && unmatched[1].reason == "no disk on the host matches \"/dev/sdz\"")
        #expect(unmatched[2].reason == "not deployable: system disk")
    }

    @Test func journalKeepsTheRunIdAndGivesFreshIdsOnlyAfterFailures() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bynar-journal-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/j.jsonl"
        do {
            let journal = try DeployJournal(path: path, newRunID: "run-1")
            #expect(!journal.resumed)
            #expect(journal.requestID(host: "h1", disk: "d1") == "run-1/h1/d1")
            try journal.append(.init(kind: .sending, host: "h1", disk: "d1", requestID: "run-1/h1/d1", atUnixMs: 1))
            try journal.append(.init(kind: .accepted, host: "h1", disk: "d1", requestID: "run-1/h1/d1", jobID: "j1", atUnixMs: 2))
            try journal.append(.init(kind: .sending, host: "h1", disk: "d2", requestID: "run-1/h1/d2", atUnixMs: 3))
            try journal.append(.init(kind: .failed, host: "h1", disk: "d2", requestID: "run-1/h1/d2", reason: "boom", atUnixMs: 4))
            try journal.append(.init(kind: .sending, host: "h2", disk: "d1", requestID: "run-1/h2/d1", atUnixMs: 5))
            try journal.append(.init(kind: .succeeded, host: "h2", disk: "d1", requestID: "run-1/h2/d1", osdID: "7", atUnixMs: 6))
        }
        // A torn last line (killed mid-write) is ignored and cut off.
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data("{\"kind\":\"succ".utf8))
        try handle.close()

        let journal = try DeployJournal(path: path, newRunID: "run-2")
        #expect(journal.resumed && journal.runID == "run-1")
        #expect(journal.requestID(host: "h1", disk: "d1") == "run-1/h1/d1", "in flight: the same id")
        #expect(journal.history(host: "h1", disk: "d1").jobID == "j1")
        #expect(journal.requestID(host: "h1", disk: "d2") == "run-1/h1/d2/again-1", "failed: a new id")
        #expect(journal.history(host: "h2", disk: "d1").last == .succeeded && journal.history(host: "h2", disk: "d1").osdID == "7")
        #expect(journal.disks(of: "h1") == ["d1", "d2"])
        try journal.append(.init(kind: .sending, host: "h3", disk: "d1", requestID: "run-1/h3/d1", atUnixMs: 7))
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains("succ\n") && text.hasSuffix("}\n"))
        #expect(try DeployJournal(path: path).history(host: "h3", disk: "d1").last == .sending)

        // A damaged line in the middle is an error naming the line.
        try "{\"kind\":\"run\",\"run_id\":\"r\",\"at_unix_ms\":1}\nnonsense\n{\"kind\":\"run\",\"at_unix_ms\":1}\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: DeployJournal.JournalError.self) { try DeployJournal(path: path) }
        do { _ = try DeployJournal(path: path) } catch { #expect(error.description.contains("line 2: not a journal entry")) }
    }

    @Test func backoffDoublesUpToItsCap() {
        var options = DeployOptions()
        options.backoffBase = .milliseconds(500)
        options.backoffMax = .seconds(3)
        #expect((1...5).map { options.backoff(attempt: $0) } == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(3), .seconds(3)])
        options.hostConcurrency = 0
        #expect(options.problem() == "concurrency must be at least 1, got 0")
    }

    @Test func tableListsFailuresLastWithTheirStep() {
        let report = DeployReport(runID: "r", journal: nil, resumed: false, hosts: 2, elapsedMs: 1234, roundTrips: .init([]), rows: [
            .init(host: "h2", disk: "d1", devPath: "/dev/sdb", result: .failed, reason: "boom", failedStep: "ceph-volume lvm create", retries: 1),
            .init(host: "h1", disk: "d1", devPath: "/dev/sdb", result: .succeeded, osdID: "3"),
        ])
        let lines = report.table().split(separator: "\n").map(String.init)
        #expect(lines[0] == "HOST  DISK  DEVICE    RESULT     OSD  DETAIL")
        #expect(lines[1] == "h1    d1    /dev/sdb  succeeded  3")
        #expect(lines[2] == "h2    d1    /dev/sdb  failed     -    step ceph-volume lvm create: boom (1 retry)")
        #expect(lines[3] == "2 hosts: 1 succeeded, 1 failed in 1.2 s (run r)")
        #expect(!report.succeeded)
    }
}
