import BynarBus
import BynarProto
import BynarTestSupport
@testable import Detector
import Foundation
import Testing

/// ``HardwareTracker``: what the detector publishes for each BMC read (rules T1-T4).
@Suite struct HardwareTrackerTests {
    func finding(_ id: String, _ severity: HardwareFinding.Severity, rule: String = "R2", kind: HardwarePartKind = .powerSupply) -> HardwareFinding {
        var part = HardwarePart(kind: kind, id: id, name: "Part \(id)")
        part.location = "Bay \(id)"
        part.serial = "SN-\(id)"
        return HardwareFinding(part: part, severity: severity, rule: rule, reason: "redfish.x", detail: "detail \(id) \(severity)")
    }

    func events(_ outputs: [HardwareTracker.Output]) -> [String] {
        outputs.compactMap { if case .event(let e) = $0 { "\(e.finding.part.id) \(e.from)->\(e.to)" } else { nil } }
    }

    func states(_ outputs: [HardwareTracker.Output]) -> [Bynar_V1_HardwareState] {
        outputs.compactMap { if case .state(let s) = $0 { s } else { nil } }
    }

    @Test func t1EventsOnlyForChangesAndT2StateOnlyWhenItChanged() {
        var tracker = HardwareTracker()
        var out = tracker.read([], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 1)
        #expect(events(out).isEmpty && states(out).map(\.partsRead) == [14] && states(out).first?.bmcReachable == true)
        #expect(tracker.read([], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 2).isEmpty)
        out = tracker.read([finding("a", .warning)], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 3)
        #expect(events(out) == ["a ok->warning"])
        #expect(states(out).first?.findings.map(\.part.location) == ["Bay a"])
        #expect(states(out).first?.readUnixMs == 3)
        #expect(tracker.read([finding("a", .warning)], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 4).isEmpty)
        out = tracker.read([finding("a", .failed), finding("b", .failed)], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 5)
        #expect(events(out) == ["a warning->failed", "b ok->failed"])
        out = tracker.read([finding("b", .failed)], partsRead: 14, gaps: [], diskKeys: [:], nowMs: 6)
        #expect(events(out) == ["a failed->ok"])
        let cleared = try? #require(out.compactMap { if case .event(let e) = $0 { e } else { nil } }.first)
        #expect(cleared?.finding.part.serial == "SN-a", "the clearing event still names the part")
        // A part swapped: healthy again, and the clearing event carries the new serial.
        var swapped = finding("b", .failed).part
        swapped.serial = "SN-b2"
        out = tracker.read([], partsRead: 14, gaps: [], diskKeys: [:], parts: ["b": swapped], nowMs: 7)
        let replaced = out.compactMap { if case .event(let e) = $0 { e } else { nil } }.first
        #expect(replaced?.to == .ok && replaced?.finding.part.serial == "SN-b2" && replaced?.finding.part.location == "Bay b")
    }

    @Test func firstReadAfterARestartAnnouncesFromUnspecified() {
        var tracker = HardwareTracker()
        #expect(events(tracker.read([finding("a", .failed)], partsRead: 1, gaps: [], diskKeys: [:], nowMs: 1)) == ["a unspecified->failed"])
    }

    @Test func t3AFailedReadKeepsTheFindingsAndSaysWhy() {
        var tracker = HardwareTracker()
        _ = tracker.read([finding("a", .failed)], partsRead: 3, gaps: ["/redfish/v1/x"], diskKeys: [:], nowMs: 1)
        var out = tracker.failed("no answer from the BMC at https://bmc/redfish/v1: refused", nowMs: 2)
        #expect(events(out).isEmpty)
        let state = states(out).first
        #expect(state?.bmcReachable == false && state?.error.contains("https://bmc/redfish/v1") == true && state?.findings.count == 1)
        #expect(tracker.failed("no answer from the BMC at https://bmc/redfish/v1: refused", nowMs: 3).isEmpty)
        out = tracker.read([finding("a", .failed)], partsRead: 3, gaps: ["/redfish/v1/x"], diskKeys: [:], nowMs: 4)
        #expect(events(out).isEmpty && states(out).first?.bmcReachable == true && states(out).first?.error == "")
        // A detector whose first read fails says so too.
        var fresh = HardwareTracker()
        #expect(states(fresh.failed("x", nowMs: 1)).first?.bmcReachable == false)
    }

    @Test func t4AManagedDriveCarriesItsDiskKey() {
        var tracker = HardwareTracker()
        let drive = finding("d", .failed, rule: "R4", kind: .drive)
        var out = tracker.read([drive], partsRead: 1, gaps: [], diskKeys: ["d": "serial-ABC"], nowMs: 1)
        #expect(states(out).first?.findings.first?.diskKey == "serial-ABC")
        // The same finding once the disk is no longer watched: an event (its route changed).
        out = tracker.read([drive], partsRead: 1, gaps: [], diskKeys: [:], nowMs: 2)
        #expect(states(out).first?.findings.first?.diskKey == "")
        #expect(events(out) == ["d failed->failed"])
    }

    @Test func driveSeverityAndSerialMatching() {
        #expect(DetectorEngine.diskSeverity(finding("d", .failed, rule: "R2", kind: .drive)) == .failed)
        #expect(DetectorEngine.diskSeverity(finding("d", .failed, rule: "R4", kind: .drive)) == .failing)
        #expect(DetectorEngine.diskSeverity(finding("d", .warning, rule: "R7", kind: .drive)) == .suspect)
        #expect(DetectorEngine.normalizedSerial("  zA1b2 ") == "ZA1B2")
        #expect(DetectorEngine.normalizedSerial(" ") == nil && DetectorEngine.normalizedSerial(nil) == nil)
    }
}

/// The running bynar-detector with `detector.redfish` against the STAND-IN BMC (DMTF
/// mockup shapes; sushy-emulator models no Power and no unhealthy part), a real broker and
/// a real loop disk over faultfs: a failed power supply is a hardware event naming it; a
/// drive the BMC predicts will fail whose serial is a watched disk goes through the disk
/// workflow (FAILING); an unreachable BMC is said on the retained state.
@Suite(.serialized, .enabled(if: FaultyDisk.available && TestBroker.available, "\(FaultyDisk.unavailableReason ?? "mosquitto is not installed")"))
struct RedfishDetectorServiceTests {
    @Test(.timeLimit(.minutes(3)))
    func failedPowerSupplyAndPredictedDriveFailureOnTheBus() async throws {
        let bmc = try RedfishStandIn()
        let disk = try FaultyDisk(sizeMB: 64, filesystem: nil)
        defer { disk.teardown() }
        // The BMC's drive in bay 1 is this host's loop disk (its serial is the backing file).
        try bmc.edit("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.1") { $0["SerialNumber"] = disk.backingFile }
        let broker = try TestBroker()
        let watcher = try await connectedBus(broker, service: "watcher")
        let hwEvents = Collector(try await watcher.subscribe(Topics.hardwareEvents(host: "h1"), as: Bynar_V1_HardwareEvent.self))
        let hwState = Collector(try await watcher.subscribe(Topics.hardwareState(host: "h1"), as: Bynar_V1_HardwareState.self))
        let diskEvents = Collector(try await watcher.subscribe(Topics.diskEvents(host: "h1"), as: Bynar_V1_DiskHealthEvent.self))
        let directory = try makeTemporaryDirectory(prefix: "bynar-detector-redfish")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "\(bmc.user):\(bmc.password)\n".write(toFile: directory + "/bmc-credentials", atomically: true, encoding: .utf8)
        let detector = try ServiceProcess("bynar-detector", brokerPort: broker.port, directory: directory, extraConfig: """
            "detector": {"check_interval_seconds": 2, "probe": false, "read_probe": false, "fsck_interval_seconds": 0,
                         "watch_only": ["\(disk.device)"],
                         "redfish": {"url": "\(bmc.baseURL)", "ca_file": "\(bmc.ca.caFile)", "credentials_file": "\(directory)/bmc-credentials",
                                     "poll_seconds": 1, "timeout_seconds": 3}}
            """)
        defer { detector.signal(SIGTERM) }
        #expect(await hwState.wait(timeout: .seconds(20)) { $0.contains { $0.payload.bmcReachable && $0.payload.partsRead == 14 } }, "\(detector.log)")
        #expect(await diskEvents.wait(timeout: .seconds(20)) { $0.contains { $0.payload.disk.devPath == disk.device && $0.payload.toState == .healthy } }, "\(detector.log)")
        #expect(hwEvents.all.isEmpty)

        // A power supply fails: a hardware event naming it, its location and serial.
        try bmc.edit("/redfish/v1/Chassis/1U/Power") { power in
            var supplies = power["PowerSupplies"] as! [[String: Any]]
            supplies[1]["Status"] = ["State": "Enabled", "Health": "Critical"]
            power["PowerSupplies"] = supplies
        }
        #expect(await hwEvents.wait(timeout: .seconds(20)) { $0.contains { $0.payload.to == .failed } }, "\(detector.log)")
        let psu = try #require(hwEvents.all.first { $0.payload.to == .failed }?.payload.finding)
        #expect(psu.part.kind == "power_supply" && psu.part.name == "Power Supply Bay 2" && psu.part.location == "PSU 2" && psu.part.serial == "1Z00002")
        #expect(psu.rule == "R2" && psu.reason == "redfish.power_supply_failed" && psu.diskKey == "")
        #expect(hwState.all.last?.payload.findings.map(\.part.serial) == ["1Z00002"])

        // The BMC predicts the failure of the drive that is our disk: the disk goes FAILING
        // with the BMC's reason, and the hardware finding carries the disk's key.
        try bmc.edit("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.1") { $0["FailurePredicted"] = true }
        #expect(await diskEvents.wait(timeout: .seconds(30)) { $0.contains { $0.payload.disk.devPath == disk.device && $0.payload.toState == .failing } }, "\(detector.log)")
        let failing = try #require(diskEvents.all.first { $0.payload.toState == .failing }?.payload)
        #expect(failing.reasons.contains { $0.rule == "redfish.failure_predicted" && $0.detail.hasPrefix("BMC: drive SAS Drive (at Disk Bay 1, serial \(disk.backingFile))") }, "\(failing.reasons)")
        #expect(await hwEvents.wait(timeout: .seconds(10)) { $0.contains { $0.payload.finding.part.kind == "drive" && $0.payload.finding.diskKey == failing.disk.key } })

        // The power supply is replaced: an event back to OK.
        try bmc.edit("/redfish/v1/Chassis/1U/Power") { power in
            var supplies = power["PowerSupplies"] as! [[String: Any]]
            supplies[1]["Status"] = ["State": "Enabled", "Health": "OK"]
            power["PowerSupplies"] = supplies
        }
        #expect(await hwEvents.wait(timeout: .seconds(20)) { $0.contains { $0.payload.finding.part.serial == "1Z00002" && $0.payload.to == .ok } }, "\(detector.log)")

        // The BMC goes away: the retained state says so, naming the URL; the drive finding stands.
        bmc.stop()
        #expect(await hwState.wait(timeout: .seconds(20)) { $0.contains { !$0.payload.bmcReachable && $0.payload.error.contains(bmc.baseURL) } }, "\(detector.log)")
        #expect(hwState.all.last?.payload.findings.map(\.part.kind) == ["drive"])
        await watcher.shutdown()
    }
}
