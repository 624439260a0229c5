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

    // MARK: Shared DB/WAL disks and stale metadata

    static func uuid(_ id: Int) -> String { "aaaaaaaa-0000-0000-0000-\(String(format: "%012d", id))" }

    /// osd.0 on loop0 alone; osd.4, 5, 6 with data on loop4-6 and their DBs on partitions
    /// 1-3 of loop3, as `ceph osd metadata` reports them (`bluefs_db_dev_node`,
    /// `bluefs_db_devices`, `devices`).
    static func sharedDB(up: Bool = true) -> [CephOSD] {
        [CephOSD(id: 0, uuid: uuid(0), hostname: "h1", mainDeviceNames: ["loop0"])]
            + (4...6).map { id in
                CephOSD(id: id, uuid: uuid(id), up: up, hostname: "h1", deviceNames: ["loop\(id)", "loop3"],
                        mainDeviceNames: ["loop\(id)"], dbDeviceNames: ["loop3p\(id - 3)", "loop3"])
            }
    }

    static func db(_ id: Int) -> DeviceLabel { .bluestore(BluestoreLabel(osdUUID: uuid(id), description: "bluefs db")) }

    @Test func eachPartitionLabelNamesItsOSDAsDB() {
        // The disk's own first block holds the GPT's protective MBR: no label there.
        let facts = DeviceFacts(key: "db", kernelName: "loop3", labels: [.other, Self.db(4), Self.db(5), Self.db(6)])
        let matches = OSDDeviceMatcher.match(facts, osds: Self.sharedDB(), hostname: "h1")
        #expect(matches.map(\.osd) == [4, 5, 6])
        #expect(matches.allSatisfy { $0.role == .db })
    }

    @Test func anUnreadableSharedDBDiskNamesEveryOSDOnItAsDB() {
        // The DB disk died: none of its labels can be read; its OSDs are down. The metadata
        // names the disk as each one's DB device (before: as their data disk).
        let facts = DeviceFacts(key: "db", kernelName: "loop3", labels: [.unreadable("EIO"), .unreadable("EIO"), .unreadable("EIO"), .unreadable("EIO")])
        let matches = OSDDeviceMatcher.match(facts, osds: Self.sharedDB(up: false), hostname: "h1")
        #expect(matches.map(\.osd) == [4, 5, 6])
        #expect(matches.allSatisfy { $0.role == .db }, "\(matches)")
        // The data disk of one of them, unreadable, is that OSD's main device only.
        let data = DeviceFacts(key: "d5", kernelName: "loop5", labels: [.unreadable("EIO")])
        let one = OSDDeviceMatcher.match(data, osds: Self.sharedDB(up: false), hostname: "h1")
        #expect(one.map(\.osd) == [5])
        #expect(one.first?.role == .main)
    }

    @Test func aPartlyUnreadableDiskAddsWhatTheMetadataNames() {
        // Partition 2's first block fails to read and its OSD is down: it comes from the
        // metadata (an up one would come from rule 2 already).
        let facts = DeviceFacts(key: "db", kernelName: "loop3", labels: [.other, Self.db(4), .unreadable("EIO"), Self.db(6)])
        let matches = OSDDeviceMatcher.match(facts, osds: Self.sharedDB(up: false), hostname: "h1")
        #expect(matches.map(\.osd) == [4, 6, 5])
        #expect(matches.allSatisfy { $0.role == .db })
        #expect(matches.last?.evidence.contains("unreadable") == true)
    }

    /// Device names moved (a reboot): osd.9 went down while its data disk was loop3; the
    /// disk now at loop3 is the healthy DB disk of osd.4-6. osd.9's stale metadata must not
    /// make it one of the disk's OSDs, in any role.
    @Test func staleMetadataOfADownOSDNamesNoHealthyDisk() {
        var osds = Self.sharedDB()
        osds.append(CephOSD(id: 9, uuid: Self.uuid(9), up: false, hostname: "h1", deviceNames: ["loop3"], mainDeviceNames: ["loop3"]))
        let dbDisk = DeviceFacts(key: "db", kernelName: "loop3", labels: [.other, Self.db(4), Self.db(5), Self.db(6)])
        #expect(OSDDeviceMatcher.match(dbDisk, osds: osds, hostname: "h1").map(\.osd) == [4, 5, 6])
        // A healthy data disk now at osd.9's old name is its label's OSD only.
        let dataDisk = DeviceFacts(key: "d", kernelName: "loop3", labels: [.bluestore(BluestoreLabel(osdUUID: Self.uuid(5), description: "main"))])
        #expect(OSDDeviceMatcher.match(dataDisk, osds: osds, hostname: "h1").map(\.osd) == [5])
        // A single DB label at that name, with osd.9's metadata naming it only in `devices`
        // (no role): osd.9 is down, so not added (the old rule took every live OSD).
        var bare = Self.sharedDB()
        bare.append(CephOSD(id: 9, uuid: Self.uuid(9), up: false, hostname: "h1", deviceNames: ["loop3"]))
        let oneLabel = DeviceFacts(key: "db", kernelName: "loop3", labels: [Self.db(4)])
        #expect(OSDDeviceMatcher.match(oneLabel, osds: bare, hostname: "h1").map(\.osd) == [4, 5, 6])
        // A blank disk at the old name is nobody's.
        #expect(OSDDeviceMatcher.match(DeviceFacts(key: "new", kernelName: "loop3", labels: [.other]), osds: osds, hostname: "h1").isEmpty)
    }

    @Test func anLVMDiskOfSharedDBsFindsEveryOSDBySerialWithItsRole() {
        let osds = [
            CephOSD(id: 1, hostname: "h1", deviceIDs: ["sdb": "ATA_SSD_S1", "nvme0n1": "NVME_FAST_N1"], mainDeviceNames: ["sdb"], dbDeviceNames: ["nvme0n1"]),
            CephOSD(id: 2, hostname: "h1", deviceIDs: ["sdc": "ATA_SSD_S2", "nvme0n1": "NVME_FAST_N1"], mainDeviceNames: ["sdc"], dbDeviceNames: ["nvme0n1"]),
        ]
        let facts = DeviceFacts(key: "n", kernelName: "nvme0n1", serial: "N1", labels: [.lvm])
        let matches = OSDDeviceMatcher.match(facts, osds: osds, hostname: "h1")
        #expect(matches.map(\.osd) == [1, 2])
        #expect(matches.allSatisfy { $0.role == .db })
    }

    @Test func theMetadataRoleOfADevice() {
        let osd = CephOSD(id: 1, deviceNames: ["sdb", "sdx"], mainDeviceNames: ["sdb1", "sdb"], dbDeviceNames: ["sdb2", "sdb"], walDeviceNames: ["sdc1", "sdc"])
        #expect(osd.metadataRole(of: "sdb") == .main)
        #expect(osd.metadataRole(of: "sdb2") == .db)
        #expect(osd.metadataRole(of: "sdc") == .wal)
        #expect(osd.metadataRole(of: "sdx") == .main)
        #expect(osd.metadataRole(of: "sdd") == nil)
        #expect(osd.deviceNames.isSuperset(of: ["sdb1", "sdb2", "sdc1", "sdx"]))
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
