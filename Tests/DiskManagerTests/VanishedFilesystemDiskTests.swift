import BynarConfig
import BynarDisks
import BynarProto
import BynarTestSupport
@testable import DiskManager
import Foundation
import Testing

/// Whose is a vanished disk's last mountpoint? (The world is passed in: mountinfo lines,
/// an fstab file, which device numbers exist. A mounted disk cannot be made to vanish on
/// this machine (a mounted loop device is only detached once unmounted), so the mounted
/// cases are decided here; FilesystemBackendTests runs the fstab case on a real disk.)
@Suite struct VanishedFilesystemDiskTests {
    static let root = "/srv/bynar"
    static let mountpoint = root + "/serial-GONE1"

    static func gone() -> BlockDevice {
        var identity = Bynar_V1_DiskIdentity()
        identity.key = "serial-GONE1"
        identity.devPath = "/dev/sdc"
        var partition = Bynar_V1_Partition()
        partition.devPath = "/dev/sdc"
        partition.filesystem = "xfs"
        partition.fsUuid = "1111-aaaa"
        partition.mountpoints = [mountpoint]
        identity.partitions = [partition]
        var device = BlockDevice(identity: identity, sysPath: "")
        device.absent = true
        return device
    }

    func decide(mountinfo: String?, fstab: String, present: Set<String> = []) throws -> BackendClaim? {
        let directory = try makeTemporaryDirectory(prefix: "bynar-vanished")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try fstab.write(toFile: directory + "/fstab", atomically: true, encoding: .utf8)
        var config = FilesystemBackendConfig()
        config.mountRoot = Self.root
        config.fstab = directory + "/fstab"
        let backend = FilesystemBackend(config: config)
        let mount = mountinfo.flatMap { MountInfoEntry.parseLine(Substring($0)) }
        return backend.vanishedClaim(Self.gone(), mount: { $0 == Self.mountpoint ? mount : nil }, fstab: try Fstab(path: config.fstab),
                                     devicePresent: { present.contains("\($0.major):\($0.minor)") })
    }

    @Test func stillMountedFromItsGoneDeviceIsInService() throws {
        let claim = try decide(mountinfo: "40 1 8:32 / \(Self.mountpoint) rw - xfs /dev/sdc rw", fstab: "")
        #expect(claim == BackendClaim(backend: "filesystem", id: Self.mountpoint, status: .inService))
    }

    @Test func aMountOfADeviceThatExistsIsAnotherDisksAndNotClaimed() throws {
        // The kernel gave /dev/sdc to the replacement, which is mounted there now.
        #expect(try decide(mountinfo: "40 1 8:32 / \(Self.mountpoint) rw - xfs /dev/sdc rw", fstab: "", present: ["8:32"]) == nil)
        // Or another disk entirely.
        #expect(try decide(mountinfo: "40 1 8:48 / \(Self.mountpoint) rw - xfs /dev/sdd rw", fstab: "") == nil)
    }

    @Test func onlyItsFstabLineLeftIsInService() throws {
        let claim = try decide(mountinfo: nil, fstab: "UUID=1111-aaaa \(Self.mountpoint) xfs defaults,nofail 0 2\n")
        #expect(claim?.status == .inService && claim?.id == Self.mountpoint)
    }

    @Test func aLineNamingAnotherFilesystemIsTheReplacementsAndNotClaimed() throws {
        #expect(try decide(mountinfo: nil, fstab: "UUID=2222-bbbb \(Self.mountpoint) xfs defaults,nofail 0 2\n") == nil)
    }

    @Test func neitherMountedNorListedIsAlreadyOut() throws {
        #expect(try decide(mountinfo: nil, fstab: "# nothing\n")?.status == .removed)
    }
}
