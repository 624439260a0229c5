import BynarProto
import Orchestrator
import Testing

/// ``DiskMemory``: each rule.
struct DiskMemoryTests {
    @Test func aHostCannotMakeTheOrchestratorRememberMoreThanItsQuota() {
        var memory = DiskMemory(maxDisksPerHost: 3, maxHosts: 2)
        for index in 0..<3 { #expect(memory.admit(host: "h2", key: "k\(index)").admitted) }
        #expect(memory.admit(host: "h2", key: "k3") == (false, 1))
        #expect(memory.admit(host: "h2", key: "k4") == (false, 2))
        #expect(memory.admit(host: "h2", key: "k0").admitted, "a remembered disk goes on")
        #expect(memory.admit(host: "h1", key: "k0").admitted, "another host has its own quota")
        #expect(memory.admit(host: "h3", key: "k0") == (false, 1), "only two hosts")
        #expect(memory.count == 4)
        #expect(memory.refused == ["h2": 2, "h3": 1])
    }

    @Test func aReplacedDiskMakesRoomForItsSuccessor() {
        var memory = DiskMemory(maxDisksPerHost: 2, maxHosts: 10)
        #expect(memory.admit(host: "h1", key: "old").admitted)
        #expect(memory.admit(host: "h1", key: "other").admitted)
        #expect(!memory.admit(host: "h1", key: "new").admitted)
        memory.forget(host: "h1", key: "old")
        #expect(memory.admit(host: "h1", key: "new").admitted)
    }

    @Test func theRefusedCountersAreBoundedToo() {
        var memory = DiskMemory(maxDisksPerHost: 1, maxHosts: 2)
        _ = memory.admit(host: "a", key: "1")
        _ = memory.admit(host: "b", key: "1")
        for index in 0..<10_000 { _ = memory.admit(host: "forged-\(index)", key: "1") }
        #expect(memory.refused.count <= 3)
        #expect(memory.refused.values.reduce(0, +) == 10_000)
    }

    @Test func aHugeHealthIsCutAndKeepsWhatTheOrchestratorUses() throws {
        var health = Bynar_V1_DiskHealth()
        health.disk.host = "h2"
        health.disk.key = "serial-X"
        health.disk.model = String(repeating: "M", count: 200_000)
        health.systemDisk = true
        health.state = .failed
        health.reasons = (0..<1000).map { index in Bynar_V1_HealthReason.with { $0.rule = "r\(index)"; $0.detail = String(repeating: "d", count: 100) } }
        let kept = DiskMemory.compact(health)
        #expect(try (kept.serializedBytes() as [UInt8]).count <= DiskMemory.entryLimit)
        #expect(kept.disk.key == "serial-X" && kept.disk.host == "h2" && kept.systemDisk && kept.state == .failed)
        var normal = Bynar_V1_DiskHealth()
        normal.disk.key = "serial-Y"
        normal.smart.overall = "PASSED"
        normal.inUseBy = "osd.3"
        normal.reasons = [Bynar_V1_HealthReason.with { $0.rule = "smart.reallocated" }]
        let compacted = DiskMemory.compact(normal)
        #expect(compacted.smart.overall == "PASSED" && compacted.inUseBy == "osd.3" && compacted.reasons.isEmpty)
    }
}
