public import BynarConfig
public import BynarDisks
import BynarProcess
import BynarProto
#if canImport(Glibc)
import Glibc
#endif

/// Plain data disks: one filesystem on the whole disk, mounted by UUID at
/// `<mount_root>/<name>`, with its fstab line kept consistent with what is mounted.
///
/// - Remove: refuse while processes use the mountpoint; unmount; drop the fstab line (so a
///   boot without the disk does not wait for it). The mountpoint is the id an Add re-uses.
/// - Add: on a blank disk only: mkfs (with a UUID only this job uses), fstab line by UUID,
///   mount through that fstab line at the removed disk's mountpoint. A failed mount takes
///   the fstab line back out.
/// - Deploy: the same at `<mount_root>/<disk key>`.
/// Each step reads the world first (mounted? listed? this job's filesystem already made?),
/// so a job resumed after a crash finishes instead of being refused.
public struct FilesystemBackend: StorageBackend {
    public let name = "filesystem"
    public let config: FilesystemBackendConfig

    public init(config: FilesystemBackendConfig) {
        self.config = config
    }

    var timeout: Duration { .seconds(config.commandTimeoutSeconds) }

    func managedMountpoint(of disk: BlockDevice) -> String? {
        disk.identity.partitions.flatMap(\.mountpoints).first { $0.hasPrefix(config.mountRoot + "/") }
    }

    public func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim] {
        var claims: [String: BackendClaim] = [:]
        let fstab = devices.contains(where: \.absent) ? try Fstab(path: config.fstab) : nil
        for device in devices {
            if device.absent, let fstab {
                claims[device.identity.key] = vanishedClaim(device, mount: Self.mount(at:), fstab: fstab, devicePresent: Self.devicePresent)
            } else if let mountpoint = managedMountpoint(of: device) {
                claims[device.identity.key] = BackendClaim(backend: name, id: mountpoint, status: .inService)
            }
        }
        return claims
    }

    /// A vanished disk (the disk-manager's last sighting of it, ``BlockDevice/absent``) is
    /// still this backend's while the world ties its last mountpoint to it: the mount there
    /// is of a device that is gone and was this disk's (its source is one of the disk's
    /// last /dev names), or the fstab line there names this disk's filesystem UUID. Then it
    /// is in service (Remove unmounts and drops the line); with neither a mount nor a line
    /// there it is already out. A mountpoint that holds or lists another disk now (its
    /// replacement) is not this disk's: no claim, so nothing of the other disk is touched.
    func vanishedClaim(_ disk: BlockDevice, mount: (String) -> MountInfoEntry?, fstab: Fstab, devicePresent: (DeviceNumber) -> Bool) -> BackendClaim? {
        guard let mountpoint = managedMountpoint(of: disk) else { return nil }
        let there = mount(mountpoint)
        let line = fstab.entry(mountpoint: mountpoint)
        if let there {
            guard Self.isMountOfVanished(there, disk, devicePresent: devicePresent) else { return nil }
            return BackendClaim(backend: name, id: mountpoint, status: .inService)
        }
        guard let line else { return BackendClaim(backend: name, id: mountpoint, status: .removed) }
        return Self.listsVanished(line, disk, at: mountpoint) ? BackendClaim(backend: name, id: mountpoint, status: .inService) : nil
    }

    /// A mount of a device that no longer exists, whose source was one of `disk`'s names.
    static func isMountOfVanished(_ mount: MountInfoEntry, _ disk: BlockDevice, devicePresent: (DeviceNumber) -> Bool) -> Bool {
        let names = Set([disk.identity.devPath] + disk.identity.partitions.map(\.devPath)).subtracting([""])
        return !devicePresent(mount.devNumber) && names.contains(mount.source)
    }

    /// An fstab line at `mountpoint` naming the filesystem UUID `disk` had there.
    static func listsVanished(_ line: Fstab.Entry, _ disk: BlockDevice, at mountpoint: String) -> Bool {
        let uuids = disk.identity.partitions.filter { $0.mountpoints.contains(mountpoint) }.map(\.fsUuid).filter { !$0.isEmpty }
        return uuids.contains { line.source == "UUID=\($0)" }
    }

    /// A disk mounted at one of this backend's mountpoints is remembered with the
    /// filesystem UUID its fstab line there names, when udev gave none (no udevd running):
    /// the line Bynar mounted it through is how its vanished self is recognised later.
    public func remembered(_ devices: [BlockDevice]) -> [BlockDevice] {
        guard devices.contains(where: { managedMountpoint(of: $0) != nil }), let fstab = try? Fstab(path: config.fstab) else { return devices }
        // Each table read and indexed once per survey, not once per disk (the first fstab
        // line for a mountpoint, the last mount there).
        let lines = Dictionary(fstab.entries(under: config.mountRoot).map { ($0.mountpoint, $0.source) }, uniquingKeysWith: { first, _ in first })
        let mounts = Dictionary(Self.mounts().map { ($0.mountPoint, $0) }, uniquingKeysWith: { _, last in last })
        return devices.map { device in
            var device = device
            for index in device.identity.partitions.indices where device.identity.partitions[index].fsUuid.isEmpty {
                let partition = device.identity.partitions[index]
                guard let mountpoint = partition.mountpoints.first(where: { $0.hasPrefix(config.mountRoot + "/") }),
                      let source = lines[mountpoint], source.hasPrefix("UUID="),
                      let there = mounts[mountpoint], there.devNumber == DeviceNumber(deviceAt: partition.devPath)
                else { continue }
                device.identity.partitions[index].fsUuid = String(source.dropFirst("UUID=".count))
            }
            return device
        }
    }

    /// Whether a block device with this number exists now.
    static func devicePresent(_ number: DeviceNumber) -> Bool {
        access("/sys/dev/block/\(number.major):\(number.minor)", F_OK) == 0
    }

    public func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer {
        let users = Self.users(of: claim.id)
        if users.isEmpty { return SafetyAnswer(safe: true, detail: "nothing uses \(claim.id)") }
        return SafetyAnswer(safe: false, detail: "\(claim.id) is in use by \(users.prefix(10).joined(separator: ", "))" + (users.count > 10 ? " and \(users.count - 10) more" : ""))
    }

    public func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, job: JobRun) throws -> OperationResult {
        let mountpoint = claim.id
        let progress = job.progress
        let fstab = try Fstab(path: config.fstab)
        // The world, not the claim: a resumed Remove finds the unmount already done.
        let there = Self.mount(at: mountpoint)
        let mounted = there != nil
        let line = fstab.entry(mountpoint: mountpoint)
        // A vanished disk's line is dropped only while it names the disk's own filesystem.
        let listed = line.map { !disk.absent || Self.listsVanished($0, disk, at: mountpoint) } ?? false
        guard mounted || listed else {
            return OperationResult(steps: ["\(mountpoint) is neither mounted nor in \(config.fstab)" + (line == nil ? "" : " for this disk")], backendID: mountpoint, skipped: true)
        }
        if let other = there {
            let another = disk.absent
                ? !Self.isMountOfVanished(other, disk, devicePresent: Self.devicePresent)
                : DeviceNumber(deviceAt: disk.identity.devPath).map { other.devNumber != $0 } ?? false
            if another {
                throw BackendRefusal("\(mountpoint) holds \(other.source) (\(other.devNumber)), not \(disk.identity.devPath); not unmounting another disk")
            }
        }
        let users = Self.users(of: mountpoint)
        guard users.isEmpty else { throw BackendRefusal("\(mountpoint) is in use by \(users.prefix(10).joined(separator: ", "))") }
        let unmountStep = "unmount \(mountpoint)"
        let fstabStep = "remove the \(config.fstab) line for \(mountpoint)"
        if simulate {
            return OperationResult(steps: (mounted ? [unmountStep] : []) + (listed ? [fstabStep] : []), backendID: mountpoint)
        }
        var done: [String] = []
        progress.step(unmountStep, 1, of: 2)
        if mounted {
            // A vanished disk's filesystem cannot be written back: detach it (lazily).
            try run(disk.absent ? ["umount", "-l", mountpoint] : ["umount", mountpoint], step: unmountStep, done: done)
            done.append(unmountStep)
        } else {
            done.append("\(mountpoint) is not mounted")
        }
        progress.step(fstabStep, 2, of: 2)
        if listed {
            do {
                try Fstab.edit(path: config.fstab) { fstab throws(BackendRefusal) in fstab.remove(mountpoint: mountpoint) }
            } catch {
                // Unmounted but still listed: the next boot would mount it again (nofail keeps
                // a missing disk from stopping the boot). Say so rather than remount a failing disk.
                throw BackendStepFailure(step: fstabStep, done: done, underlying: "\(error)")
            }
            done.append(fstabStep)
        } else {
            done.append("\(config.fstab) has no line for \(mountpoint)")
        }
        return OperationResult(steps: done, backendID: mountpoint)
    }

    public func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, job: JobRun) throws -> OperationResult {
        guard reuseID.hasPrefix(config.mountRoot + "/"), !reuseID.contains("/../"), !reuseID.hasSuffix("/..") else {
            throw BackendRefusal("\"\(reuseID)\" is not a mountpoint under \(config.mountRoot)")
        }
        return try format(disk, at: reuseID, simulate: simulate, job: job)
    }

    public func deploy(_ disk: BlockDevice, simulate: Bool, job: JobRun) throws -> OperationResult {
        try format(disk, at: "\(config.mountRoot)/\(disk.identity.key)", simulate: simulate, job: job)
    }

    /// A mountpoint is out while nothing is mounted there.
    public func isOut(_ id: String) throws -> Bool {
        Self.mount(at: id) == nil
    }

    /// mkfs on a blank disk, fstab line by UUID, mount through it. Each step looks first: a
    /// disk already carrying this job's filesystem (``JobRun/filesystemUUID``) is not made
    /// again, an fstab line already right is kept, a mount already there is not repeated.
    func format(_ disk: BlockDevice, at mountpoint: String, simulate: Bool, job: JobRun) throws -> OperationResult {
        let device = disk.identity.devPath
        let progress = job.progress
        let found = Self.filesystem(on: device, timeout: timeout)
        let ours = job.filesystemUUID.map { uuid in found?.uuid == uuid && found?.type == config.filesystem } ?? false
        if !ours, let why = DiskChecks.whyNotBlank(disk) { throw BackendRefusal(why) }
        if let there = Self.mount(at: mountpoint), !(ours && there.devNumber == DeviceNumber(deviceAt: device)) {
            throw BackendRefusal("something is already mounted at \(mountpoint) (\(there.source))")
        }
        let uuidOption: [String] = job.filesystemUUID.map { config.filesystem == "ext4" ? ["-U", $0] : ["-m", "uuid=\($0)"] } ?? []
        let mkfs = ["mkfs.\(config.filesystem)"] + (config.filesystem == "ext4" ? ["-q", "-F"] : ["-q"]) + uuidOption + config.mkfsOptions + [device]
        let mkfsStep = "make \(config.filesystem) on \(device)"
        let fstabStep = "add the \(config.fstab) line for \(mountpoint) (by UUID)"
        let mountStep = "mount \(mountpoint)"
        if simulate {
            return OperationResult(steps: ["\(device) is blank", "\(mkfsStep): \(mkfs.joined(separator: " "))", fstabStep, mountStep], backendID: mountpoint)
        }
        var done: [String] = []
        progress.step(mkfsStep, 1, of: 3)
        if ours {
            done.append("\(device) already carries this job's \(config.filesystem) (UUID=\(found?.uuid ?? ""))")
        } else {
            done.append("\(device) is blank")
            try run(mkfs, step: mkfsStep, done: done)
            done.append(mkfsStep)
        }

        progress.step(fstabStep, 2, of: 3)
        let uuid: String
        do {
            guard let made = Self.filesystem(on: device, timeout: timeout), !made.uuid.isEmpty else { throw BackendRefusal("blkid found no UUID on \(device) after mkfs") }
            uuid = made.uuid
            try Fstab.edit(path: config.fstab) { fstab throws(BackendRefusal) in
                try fstab.set(.init(source: "UUID=\(uuid)", mountpoint: mountpoint, type: config.filesystem, options: config.mountOptions))
            }
        } catch {
            throw BackendStepFailure(step: fstabStep, done: done, underlying: "\(error)")
        }
        done.append("\(fstabStep): UUID=\(uuid)")

        progress.step(mountStep, 3, of: 3)
        if Self.mount(at: mountpoint) != nil {
            done.append("\(mountpoint) is already mounted from \(device)")
            return OperationResult(steps: done, backendID: mountpoint)
        }
        do {
            try Self.makeDirectories(mountpoint)
            try run(["mount", "--fstab", config.fstab, mountpoint], step: mountStep, done: done)
        } catch {
            var rollback: String
            do {
                try Fstab.edit(path: config.fstab) { fstab throws(BackendRefusal) in fstab.remove(mountpoint: mountpoint) }
                rollback = "took the \(config.fstab) line back out"
            } catch {
                rollback = "could not take the \(config.fstab) line back out: \(error)"
            }
            let underlying = (error as? BackendStepFailure)?.underlying ?? "\(error)"
            throw BackendStepFailure(step: mountStep, done: done, rollback: rollback, underlying: underlying)
        }
        done.append(mountStep)
        return OperationResult(steps: done, backendID: mountpoint)
    }

    /// The filesystem `blkid -p` finds on `device` (type and UUID), or nil.
    static func filesystem(on device: String, timeout: Duration) -> (type: String, uuid: String)? {
        let probe = SignatureProbe.run(device, timeout: timeout)
        guard let type = probe.type else { return nil }
        return (type, probe.uuid ?? "")
    }

    /// What is mounted at `mountpoint` now (the last mount there wins), or nil.
    static func mount(at mountpoint: String) -> MountInfoEntry? {
        mounts().last { $0.mountPoint == mountpoint }
    }

    /// Every mount now (empty when /proc/self/mountinfo cannot be read).
    static func mounts() -> [MountInfoEntry] {
        guard let text = try? readFile("/proc/self/mountinfo").get() else { return [] }
        return MountInfoEntry.parse(String(decoding: text, as: UTF8.self))
    }

    /// Runs a tool; throws a step failure with its output unless it exits 0.
    func run(_ command: [String], step: String, done: [String]) throws {
        let result: Tool.Run
        do {
            result = try Tool.run(command, timeout: timeout, mergeStderr: true)
        } catch {
            throw BackendStepFailure(step: step, done: done, underlying: "\(error)")
        }
        guard result.exitCode == 0 else {
            let output = result.text.trimmingCharacters(in: .whitespacesAndNewlines)
            throw BackendStepFailure(step: step, done: done, underlying: "\(command.joined(separator: " ")): exit \(result.exitCode.map(String.init) ?? "signal \(result.signal ?? 0)")\(output.isEmpty ? "" : ": \(output.suffix(1000))")")
        }
    }

    /// mkdir -p.
    static func makeDirectories(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw BackendRefusal("cannot create \(current): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Processes with a file, working directory or root under `mountpoint` ("pid 123 (name)").
    static func users(of mountpoint: String) -> [String] {
        let me = getpid()
        return listDirectory("/proc").compactMap { name -> String? in
            guard let pid = Int32(name), pid != me else { return nil }
            let links = ["/proc/\(pid)/cwd", "/proc/\(pid)/root"] + listDirectory("/proc/\(pid)/fd").map { "/proc/\(pid)/fd/\($0)" }
            let uses = links.contains { link in
                guard let target = readLink(link) else { return false }
                return target == mountpoint || target.hasPrefix(mountpoint + "/")
            }
            guard uses else { return nil }
            let comm = (try? readFile("/proc/\(pid)/comm").get()).map { String(decoding: $0, as: UTF8.self) } ?? "?"
            return "pid \(pid) (\(comm.trimmingCharacters(in: .whitespacesAndNewlines)))"
        }
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
