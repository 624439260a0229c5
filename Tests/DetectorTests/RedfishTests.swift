import BynarConfig
import BynarTestSupport
@testable import Detector
import Foundation
import Testing

/// The Redfish judge (pure, every rule), the parts read from DMTF-shaped mockup JSON
/// (Tests/Fixtures/redfish/rackmount, written from DMTF's public-rackmount1 mockup and
/// the Drive/Power/Thermal schemas), and the config section's checks.
@Suite struct RedfishJudgeTests {
    let judge = RedfishJudge(lifeLeftWarningPercent: 10)

    func part(_ kind: HardwarePartKind, health: String? = "OK", state: String? = "Enabled", _ change: (inout HardwarePart) -> Void = { _ in }) -> HardwarePart {
        var part = HardwarePart(kind: kind, id: "/redfish/v1/x/\(kind.rawValue)", name: "Part")
        part.health = health
        part.state = state
        change(&part)
        return part
    }

    @Test func healthyPartsGiveNothing() {
        for kind in HardwarePartKind.allCases {
            #expect(judge.judge(part(kind)) == nil)
            #expect(judge.judge(part(kind, health: nil)) == nil)
        }
    }

    @Test func r1AbsentOrDisabledPartsAreNotJudged() {
        for state in ["Absent", "Disabled", "StandbyOffline", "UnavailableOffline"] {
            #expect(judge.judge(part(.drive, health: "Critical", state: state) { $0.failurePredicted = true }) == nil)
        }
        #expect(judge.judge(part(.drive, health: "Critical", state: "StandbySpare"))?.rule == "R2")
    }

    @Test func r2CriticalIsFailedAndNamesThePart() throws {
        for kind in HardwarePartKind.allCases {
            let finding = try #require(judge.judge(part(kind, health: "Critical")))
            #expect(finding.severity == .failed)
            #expect(finding.rule == "R2")
            #expect(finding.reason == "redfish.\(kind.rawValue)_failed")
        }
        let psu = part(.powerSupply, health: "Critical") { $0.name = "Power Supply Bay 2"; $0.location = "PSU 2"; $0.serial = "1Z00002" }
        #expect(judge.judge(psu)?.detail == "power supply Power Supply Bay 2 (at PSU 2, serial 1Z00002) reports health Critical")
    }

    @Test func r3ReadingsBeyondCriticalLimitsAreFailedWhateverTheHealth() throws {
        let hot = part(.temperature) { $0.reading = 45; $0.upperNonCritical = 42; $0.upperCritical = 45 }
        let finding = try #require(judge.judge(hot))
        #expect(finding.rule == "R3" && finding.severity == .failed && finding.reason == "redfish.temperature_out_of_range")
        #expect(finding.detail.contains("45 °C, at or above its critical limit 45 °C"))
        let slow = part(.fan) { $0.reading = 400; $0.lowerNonCritical = 1000; $0.lowerCritical = 500 }
        #expect(judge.judge(slow)?.rule == "R3")
        // A fan's reading is never compared with upper limits, a temperature's never with lower ones.
        #expect(judge.judge(part(.fan) { $0.reading = 9000; $0.upperCritical = 100 }) == nil)
        #expect(judge.judge(part(.temperature) { $0.reading = 1; $0.lowerCritical = 5 }) == nil)
        // Other kinds' readings are not judged.
        #expect(judge.judge(part(.powerSupply) { $0.reading = 1; $0.lowerCritical = 5 }) == nil)
    }

    @Test func r4PredictedFailureOfADriveIsFailed() throws {
        let finding = try #require(judge.judge(part(.drive) { $0.failurePredicted = true; $0.serial = "S1" }))
        #expect(finding.rule == "R4" && finding.severity == .failed && finding.reason == "redfish.failure_predicted")
        #expect(judge.judge(part(.memory) { $0.failurePredicted = true }) == nil)
        #expect(judge.judge(part(.drive) { $0.failurePredicted = false }) == nil)
    }

    @Test func r5WarningHealthIsAWarning() throws {
        let finding = try #require(judge.judge(part(.fan, health: "Warning")))
        #expect(finding.rule == "R5" && finding.severity == .warning && finding.reason == "redfish.fan_warning")
        // R2 before R5, and R3/R4 (failed) before R5.
        #expect(judge.judge(part(.drive, health: "Warning") { $0.failurePredicted = true })?.rule == "R4")
    }

    @Test func r6ReadingsBeyondNonCriticalLimitsAreWarnings() throws {
        let warm = part(.temperature) { $0.reading = 42; $0.upperNonCritical = 42; $0.upperCritical = 45 }
        #expect(judge.judge(warm).map { [$0.rule, $0.severity.rawValue] } == ["R6", "warning"])
        #expect(judge.judge(part(.temperature) { $0.reading = 41.5; $0.upperNonCritical = 42 }) == nil)
        #expect(judge.judge(part(.fan) { $0.reading = 1000; $0.lowerNonCritical = 1000 })?.rule == "R6")
    }

    @Test func r7LowMediaLifeIsAWarning() throws {
        let finding = try #require(judge.judge(part(.drive) { $0.lifeLeftPercent = 10 }))
        #expect(finding.rule == "R7" && finding.severity == .warning && finding.reason == "redfish.media_life_low")
        #expect(finding.detail.hasSuffix("10% of its media life left (warning at 10%)"))
        #expect(judge.judge(part(.drive) { $0.lifeLeftPercent = 11 }) == nil)
        #expect(RedfishJudge(lifeLeftWarningPercent: 0).judge(part(.drive) { $0.lifeLeftPercent = 5 }) == nil)
    }

    @Test func r8RollupsAreReportedOnlyWithoutAFindingOnAPart() {
        let system = part(.system, health: "Critical")
        let chassis = part(.chassis, health: "Warning")
        let psu = part(.powerSupply, health: "Critical")
        #expect(judge.judge([system, chassis, psu]).map(\.part.kind) == [.powerSupply])
        #expect(judge.judge([system, chassis, part(.powerSupply)]).map(\.part.kind) == [.system, .chassis])
        #expect(judge.judge([part(.system), part(.powerSupply)]).isEmpty)
    }

    static func resource(_ path: String) throws -> RedfishResource {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: "\(packageRoot)/Tests/Fixtures/redfish/rackmount\(path)/index.json"))
        return try RedfishResource.decode(Array(bytes))
    }

    @Test func mockupShapesBecomeParts() throws {
        let drive = HardwarePart(.drive, try Self.resource("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.0"))
        #expect(drive.id == "/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.0")
        #expect(drive.location == "Disk Bay 0" && drive.serial == "72D0A030FLF1" && drive.health == "OK")
        #expect(drive.failurePredicted == false && drive.lifeLeftPercent == 100)
        // Drive v1.3's Location array with Info.
        let old = HardwarePart(.drive, try Self.resource("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.2"))
        #expect(old.location == "Front Bay 2" && old.lifeLeftPercent == nil)
        let power = try Self.resource("/redfish/v1/Chassis/1U/Power")
        let psu = HardwarePart(.powerSupply, try #require(power.powerSupplies?.last))
        #expect(psu.id == "/redfish/v1/Chassis/1U/Power#/PowerSupplies/1" && psu.name == "Power Supply Bay 2" && psu.location == "PSU 2" && psu.serial == "1Z00002")
        let thermal = try Self.resource("/redfish/v1/Chassis/1U/Thermal")
        let cpu = HardwarePart(.temperature, try #require(thermal.temperatures?.first))
        #expect(cpu.reading == 41 && cpu.upperNonCritical == 42 && cpu.upperCritical == 45)
        let fan = HardwarePart(.fan, try #require(thermal.fans?.first))
        #expect(fan.reading == 2100 && fan.lowerCritical == 500 && fan.location == "Fan 1")
        let dimm = HardwarePart(.memory, try Self.resource("/redfish/v1/Systems/437XR1138R2/Memory/DIMM1"))
        #expect(dimm.location == "DIMM A1" && dimm.serial == "DIMM-SN-0001")
        #expect(judge.judge(HardwarePart(.memory, try Self.resource("/redfish/v1/Systems/437XR1138R2/Memory/DIMM2"))) == nil)
    }

    @Test func locationFallsBackToTypeAndOrdinal() throws {
        let json = #"{"@odata.id": "/x", "Name": "PSU", "Location": {"PartLocation": {"LocationType": "Bay", "LocationOrdinalValue": 3}}}"#
        #expect(HardwarePart(.powerSupply, try RedfishResource.decode(Array(json.utf8))).location == "Bay 3")
    }

    @Test func configProblemsNameTheField() throws {
        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(#"{"detector": {"redfish": {"url": "ftp://bmc", "auth": "digest", "poll_seconds": 0, "timeout_seconds": 0, "ca_file": "/nonexistent/ca.pem", "insecure": true, "life_left_warning_percent": 101}}}"#)
        }
        let fields = Dictionary(error.problems.map { ($0.field, $0.problem) }, uniquingKeysWith: { $0 + "; " + $1 })
        #expect(fields["detector.redfish.url"] == "must start with https://, got ftp://bmc")
        #expect(fields["detector.redfish.auth"] == "must be session or basic, got digest")
        #expect(fields["detector.redfish.poll_seconds"] == "must be at least 1, got 0")
        #expect(fields["detector.redfish.timeout_seconds"] == "must be at least 1, got 0")
        #expect(fields["detector.redfish.ca_file"]?.contains("set either ca_file or insecure, not both") == true)
        #expect(fields["detector.redfish.ca_file"]?.contains("No such file or directory") == true)
        #expect(fields["detector.redfish.credentials_file"]?.hasPrefix("is required") == true)
        #expect(fields["detector.redfish.life_left_warning_percent"] == "must be 0 to 100, got 101")
        let directory = try makeTemporaryDirectory(prefix: "bynar-redfish-config")
        try "bmc-user:pass:word\n".write(toFile: directory + "/good", atomically: true, encoding: .utf8)
        try "no colon\n".write(toFile: directory + "/bad", atomically: true, encoding: .utf8)
        let plain = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(#"{"detector": {"redfish": {"url": "http://bmc", "credentials_file": "\#(directory)/good"}}}"#)
        }
        #expect(plain.problems.map(\.field) == ["detector.redfish.url"])
        let badLine = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(#"{"detector": {"redfish": {"url": "https://bmc", "credentials_file": "\#(directory)/bad"}}}"#)
        }
        #expect(badLine.problems.map(\.field) == ["detector.redfish.credentials_file"])
        #expect(badLine.problems.map(\.problem) == ["the first line of \(directory)/bad must be user:password"])
        #expect(try ConfigLoader.parse("{}").detector.redfish == nil)
        let defaults = try #require(try ConfigLoader.parse(#"{"detector": {"redfish": {"url": "https://bmc", "credentials_file": "\#(directory)/good"}}}"#).detector.redfish)
        #expect(defaults.pollSeconds == 60 && defaults.auth == "session" && defaults.timeoutSeconds == 10 && !defaults.insecure)
    }
}

/// The Redfish client against a STAND-IN BMC (Tests/StandIns/redfish/redfish_standin.py:
/// DMTF mockup shapes over HTTPS with sessions and basic auth, for what sushy-emulator
/// does not model: Power, Memory, sessions, failed parts) and against the real
/// sushy-emulator (OpenStack sushy-tools) for what it does model.
@Suite(.serialized) struct RedfishClientTests {
    static func config(url: String, ca: String?, user: String, password: String, auth: String, directory: String) throws -> DetectorRedfishConfig {
        let credentials = directory + "/bmc-credentials"
        try "\(user):\(password)\n".write(toFile: credentials, atomically: true, encoding: .utf8)
        var config = DetectorRedfishConfig()
        config.url = url
        config.caFile = ca
        config.credentialsFile = credentials
        config.auth = auth
        config.timeoutSeconds = 5
        return config
    }

    static func read(_ config: DetectorRedfishConfig) async throws -> RedfishReader.Reading {
        let client = try RedfishClient(config: config)
        defer { Task { await client.shutdown() } }
        do {
            let reading = try await RedfishReader(client: client).read()
            await client.shutdown()
            return reading
        } catch {
            await client.shutdown()
            throw error
        }
    }

    @Test func standInSessionReadAndAFailedPowerSupply() async throws {
        let bmc = try RedfishStandIn()
        let config = try Self.config(url: bmc.baseURL, ca: bmc.ca.caFile, user: bmc.user, password: bmc.password, auth: "session", directory: bmc.directory)
        let judge = RedfishJudge(lifeLeftWarningPercent: Double(config.lifeLeftWarningPercent))
        let reading = try await Self.read(config)
        #expect(reading.gaps.isEmpty)
        let kinds = Dictionary(grouping: reading.parts, by: \.kind).mapValues(\.count)
        #expect(kinds == [.system: 1, .memory: 2, .storageController: 1, .drive: 3, .chassis: 1, .powerSupply: 2, .fan: 2, .temperature: 2])
        #expect(judge.judge(reading.parts).isEmpty)
        // Every request after the login carried the session token; none basic auth; the session was ended.
        let seen = try bmc.requests()
        #expect(seen.first.map { [$0.method, $0.path] } == ["POST", "/redfish/v1/SessionService/Sessions"])
        #expect(seen.dropFirst().filter { $0.method == "GET" }.allSatisfy { $0.auth == "session" })
        #expect(seen.last?.method == "DELETE")

        try bmc.edit("/redfish/v1/Chassis/1U/Power") { power in
            var supplies = power["PowerSupplies"] as! [[String: Any]]
            supplies[1]["Status"] = ["State": "Enabled", "Health": "Critical"]
            power["PowerSupplies"] = supplies
        }
        try bmc.edit("/redfish/v1/Chassis/1U") { $0["Status"] = ["State": "Enabled", "Health": "Critical", "HealthRollup": "Critical"] }
        let findings = judge.judge(try await Self.read(config).parts)
        #expect(findings.map(\.detail) == ["power supply Power Supply Bay 2 (at PSU 2, serial 1Z00002) reports health Critical"])
    }

    @Test func standInSessionExpiryLogsInAgain() async throws {
        let bmc = try RedfishStandIn()
        let config = try Self.config(url: bmc.baseURL, ca: bmc.ca.caFile, user: bmc.user, password: bmc.password, auth: "session", directory: bmc.directory)
        let client = try RedfishClient(config: config)
        _ = try await client.get("/redfish/v1/Systems")
        try bmc.expireSessions()
        let systems = try await client.get("/redfish/v1/Systems")
        #expect(systems.members?.count == 1)
        await client.shutdown()
        #expect(try bmc.requests().filter { $0.method == "POST" }.count == 2)
    }

    @Test func standInFailedDriveAndBasicAuth() async throws {
        let bmc = try RedfishStandIn()
        let config = try Self.config(url: bmc.baseURL, ca: bmc.ca.caFile, user: bmc.user, password: bmc.password, auth: "basic", directory: bmc.directory)
        try bmc.edit("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.1") { $0["FailurePredicted"] = true }
        try bmc.edit("/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/Disk.Bay.0") { $0["PredictedMediaLifeLeftPercent"] = 3 }
        let findings = RedfishJudge(lifeLeftWarningPercent: 10).judge(try await Self.read(config).parts)
        #expect(findings.map { "\($0.rule) \($0.part.serial ?? "") \($0.part.location ?? "")" } == ["R7 72D0A030FLF1 Disk Bay 0", "R4 72D0A031FLF1 Disk Bay 1"])
        #expect(try bmc.requests().allSatisfy { $0.auth == "basic" })
    }

    @Test func wrongPasswordAndWrongCAGiveClearErrors() async throws {
        let bmc = try RedfishStandIn()
        let wrong = try Self.config(url: bmc.baseURL, ca: bmc.ca.caFile, user: bmc.user, password: "nope", auth: "session", directory: bmc.directory)
        let refused = await #expect(throws: RedfishError.self) { try await Self.read(wrong) }
        #expect(refused?.description == "POST \(bmc.baseURL)/redfish/v1/SessionService/Sessions answered 401: the BMC refused the credentials (invalid user name or password)")
        var basic = wrong
        basic.auth = "basic"
        let refusedBasic = await #expect(throws: RedfishError.self) { try await Self.read(basic) }
        #expect(refusedBasic?.description.hasPrefix("GET \(bmc.baseURL)/redfish/v1/Systems answered 401: the BMC refused the credentials") == true)
        let otherCA = try Self.config(url: bmc.baseURL, ca: bmc.ca.otherCAFile, user: bmc.user, password: bmc.password, auth: "session", directory: bmc.directory)
        let untrusted = await #expect(throws: RedfishError.self) { try await Self.read(otherCA) }
        let text = untrusted?.description ?? ""
        #expect(text.hasPrefix("no answer from the BMC at \(bmc.baseURL)/redfish/v1/SessionService/Sessions: "))
        #expect(text.contains("CERTIFICATE_VERIFY_FAILED") || text.lowercased().contains("certificate"))
        var insecure = otherCA
        insecure.caFile = nil
        insecure.insecure = true
        #expect(try await Self.read(insecure).parts.count == 14)
    }

    @Test func badCredentialsFileIsNamed() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-redfish-cred")
        try "no-colon-here\n".write(toFile: directory + "/c", atomically: true, encoding: .utf8)
        var config = DetectorRedfishConfig()
        config.url = "https://127.0.0.1:1"
        config.credentialsFile = directory + "/c"
        #expect(throws: RedfishError.credentials(path: directory + "/c", problem: "the first line must be user:password")) { try RedfishClient(config: config) }
    }

    @Test(.enabled(if: SushyEmulator.available, "\(SushyEmulator.unavailableReason)"))
    func sushyEmulatorOverTLSWithBasicAuth() async throws {
        let bmc = try SushyEmulator()
        let config = try Self.config(url: bmc.baseURL, ca: bmc.ca.caFile, user: bmc.user, password: bmc.password, auth: "basic", directory: bmc.directory)
        let reading = try await Self.read(config)
        let drive = try #require(reading.parts.first { $0.kind == .drive })
        #expect(drive.serial == SushyEmulator.driveSerial && drive.health == "OK" && drive.failurePredicted == false)
        #expect(reading.parts.contains { $0.kind == .storageController && $0.serial == "2M220100SL" })
        #expect(reading.parts.filter { $0.kind == .fan }.count == 2)
        #expect(reading.parts.contains { $0.kind == .temperature && $0.reading == 41 && $0.upperNonCritical == 42 })
        #expect(reading.parts.contains { $0.kind == .system } && reading.parts.contains { $0.kind == .chassis })
        // sushy-emulator links Memory but does not serve it; it has no Power at all.
        #expect(reading.gaps.contains { $0.hasSuffix("/Memory") })
        #expect(!reading.parts.contains { $0.kind == .powerSupply })
        #expect(RedfishJudge(lifeLeftWarningPercent: 10).judge(reading.parts).isEmpty)
        var wrong = config
        wrong.credentialsFile = bmc.directory + "/wrong"
        try "\(bmc.user):wrong\n".write(toFile: wrong.credentialsFile, atomically: true, encoding: .utf8)
        let refused = await #expect(throws: RedfishError.self) { try await Self.read(wrong) }
        #expect(refused?.description.hasPrefix("GET \(bmc.baseURL)/redfish/v1/Systems answered 401: the BMC refused the credentials") == true)
    }

    /// The same requests against sushy-emulator and the stand-in, where they overlap
    /// (Systems, Storage, Drives, Chassis, Thermal): the same properties come back, so the
    /// stand-in's shapes are the ones a Redfish service sends.
    @Test(.enabled(if: SushyEmulator.available, "\(SushyEmulator.unavailableReason)"))
    func contractStandInAndSushyAgree() async throws {
        let sushy = try SushyEmulator()
        let standIn = try RedfishStandIn()
        let a = try await Self.read(try Self.config(url: sushy.baseURL, ca: sushy.ca.caFile, user: sushy.user, password: sushy.password, auth: "basic", directory: sushy.directory))
        let b = try await Self.read(try Self.config(url: standIn.baseURL, ca: standIn.ca.caFile, user: standIn.user, password: standIn.password, auth: "basic", directory: standIn.directory))
        for kind in [HardwarePartKind.system, .chassis, .storageController, .drive, .fan, .temperature] {
            let fromSushy = try #require(a.parts.first { $0.kind == kind }, "sushy-emulator has no \(kind)")
            let fromStandIn = try #require(b.parts.first { $0.kind == kind }, "the stand-in has no \(kind)")
            func shape(_ part: HardwarePart) -> [Bool] {
                [part.state != nil, part.health != nil, part.id.hasPrefix("/redfish/v1/"), part.reading != nil, part.upperCritical != nil || part.lowerCritical != nil || ![.temperature, .fan].contains(kind)]
            }
            #expect(shape(fromSushy) == shape(fromStandIn), "\(kind)")
            #expect(fromSushy.state == fromStandIn.state && fromSushy.health == fromStandIn.health, "\(kind)")
            if kind == .drive || kind == .storageController { #expect(fromSushy.serial != nil && fromStandIn.serial != nil) }
        }
    }
}
