import BynarCeph
import Testing

/// The BlueStore label parser against a label laid out as Ceph's
/// `bluestore_bdev_label_t::encode` writes it, and the disk-to-OSD rules of
/// ``OSDDeviceMatcher`` over every kind of evidence. (A label read from a real OSD's disk is
/// checked in `CephEndToEndTests`.)
struct OSDDeviceMatcherTests {
    static let uuid = "1b7e3c2a-0c6f-4d55-9a57-2f1a3a1f0c11"

    /// A label as BlueStore writes it: text header, then the encoded struct.
    static func labelBlock(uuid: String = uuid, description: String = "main", meta: [(String, String)] = [("whoami", "4"), ("ceph_fsid", "f00d")]) -> [UInt8] {
        var bytes = Array("bluestore block device\n\(uuid)\n".utf8)
        var body: [UInt8] = []
        func u32(_ value: Int) { body += (0..<4).map { UInt8((value >> (8 * $0)) & 0xff) } }
        func string(_ text: String) { u32(text.utf8.count); body += Array(text.utf8) }
        body += [UInt8](repeating: 0xab, count: 16)  // uuid bytes
        body += [UInt8](repeating: 0, count: 8)      // size
        body += [UInt8](repeating: 0, count: 8)      // btime
        string(description)
        u32(meta.count)
        for (key, value) in meta { string(key); string(value) }
        bytes += [2, 1]
        bytes += (0..<4).map { UInt8((body.count >> (8 * $0)) & 0xff) }
        bytes += body
        return bytes + [UInt8](repeating: 0, count: 4096 - bytes.count)
    }

    @Test func parsesALabel() throws {
        let label = try #require(BluestoreLabel.parse(Self.labelBlock()))
        #expect(label.osdUUID == Self.uuid)
        #expect(label.description == "main")
        #expect(label.whoami == 4)
        #expect(label.clusterFSID == "f00d")
        #expect(BluestoreLabel.parse(Self.labelBlock(description: "bluefs db"))?.description == "bluefs db")
    }

    @Test func rejectsWhatIsNoLabel() {
        #expect(BluestoreLabel.parse([UInt8](repeating: 0, count: 4096)) == nil)
        #expect(BluestoreLabel.parse(Array("bluestore block device\nnot-a-uuid\n".utf8) + [UInt8](repeating: 0, count: 100)) == nil)
        // A header whose struct is cut short still names the OSD.
        let short = Array(Self.labelBlock().prefix(70))
        #expect(BluestoreLabel.parse(short)?.osdUUID == Self.uuid)
        #expect(BluestoreLabel.parse(short)?.description == "")
    }

    static let osds = [
        CephOSD(id: 4, uuid: uuid, up: false, hostname: "h1", deviceNames: ["loop4"], deviceIDs: ["loop4": "ATA_DISK_Z1Z3ABCD"]),
        CephOSD(id: 5, uuid: "aaaaaaaa-0000-0000-0000-000000000005", hostname: "h1", deviceNames: ["loop5"]),
        CephOSD(id: 6, uuid: "aaaaaaaa-0000-0000-0000-000000000006", hostname: "h2", deviceNames: ["loop4"]),
    ]

    @Test func aLabelNamesItsOSD() {
        let facts = DeviceFacts(key: "k", kernelName: "loop9", labels: [.bluestore(BluestoreLabel(osdUUID: Self.uuid, description: "main"))])
        #expect(OSDDeviceMatcher.match(facts, osds: Self.osds, hostname: "h1").map(\.osd) == [4])
    }

    @Test func aLabelOfAnOSDTheClusterNoLongerHasNamesNothing() {
        let facts = DeviceFacts(key: "k", kernelName: "loop4", labels: [.bluestore(BluestoreLabel(osdUUID: "bbbbbbbb-0000-0000-0000-000000000000"))])
        #expect(OSDDeviceMatcher.match(facts, osds: Self.osds, hostname: "h1").isEmpty)
    }

    @Test func aBlankDiskAtAnOldKernelNameIsBlank() {
        // The technician's new disk came up as loop4, which the metadata still names for osd.4.
        let facts = DeviceFacts(key: "new", kernelName: "loop4", labels: [.other])
        #expect(OSDDeviceMatcher.match(facts, osds: Self.osds, hostname: "h1").isEmpty)
        var destroyed = Self.osds
        destroyed[0].destroyed = true
        #expect(OSDDeviceMatcher.match(facts, osds: destroyed, hostname: "h1").isEmpty)
    }

    @Test func anUnreadableDiskIsFoundBySerialThenByKernelNameOfALiveOSD() {
        let bySerial = DeviceFacts(key: "k", kernelName: "sdq", serial: "Z1Z3ABCD", labels: [.unreadable("EIO")])
        #expect(OSDDeviceMatcher.match(bySerial, osds: Self.osds, hostname: "h1").map(\.osd) == [4])
        let byName = DeviceFacts(key: "k", kernelName: "loop5", labels: [.unreadable("EIO")])
        #expect(OSDDeviceMatcher.match(byName, osds: Self.osds, hostname: "h1").map(\.osd) == [5])
        // Another host's OSD with the same kernel name is not ours.
        #expect(OSDDeviceMatcher.match(byName, osds: Self.osds, hostname: "h2").isEmpty)
        // A destroyed OSD's metadata is stale: never matched by kernel name.
        var destroyed = Self.osds
        destroyed[1].destroyed = true
        #expect(OSDDeviceMatcher.match(byName, osds: destroyed, hostname: "h1").isEmpty)
    }

    @Test func anLVMDiskFallsBackToMetadata() {
        let facts = DeviceFacts(key: "k", kernelName: "loop5", labels: [.lvm])
        #expect(OSDDeviceMatcher.match(facts, osds: Self.osds, hostname: "h1").map(\.osd) == [5])
    }

    @Test func aSharedDBDeviceServesEveryOSDThatNamesIt() {
        var osds = Self.osds
        osds[1].deviceNames.insert("loop7")  // osd.5's DB is on loop7 too
        let facts = DeviceFacts(key: "db", kernelName: "loop7", labels: [.bluestore(BluestoreLabel(osdUUID: Self.uuid, description: "bluefs db"))])
        let matches = OSDDeviceMatcher.match(facts, osds: osds, hostname: "h1")
        #expect(matches.map(\.osd) == [4, 5])
        #expect(matches.allSatisfy { $0.role == .db })
    }

    @Test func inconsistentPGsComeFromHealthDetail() {
        let health = CephHealth(status: "HEALTH_ERR", checks: [
            CephHealthCheck(code: "OSD_SCRUB_ERRORS", severity: "HEALTH_ERR", summary: "2 scrub errors", details: []),
            CephHealthCheck(code: "PG_DAMAGED", severity: "HEALTH_ERR", summary: "Possible data damage: 1 pg inconsistent",
                            details: ["pg 2.3 is active+clean+inconsistent, acting [0,4,1]", "pg 2.5 is active+clean, acting [1,2,3]"]),
        ])
        #expect(health.inconsistentPGs.map(\.pg) == ["2.3"])
        #expect(health.inconsistentPGs.first?.acting == [0, 4, 1])
    }
}
