public import BynarConfig
public import BynarDisks
import BynarProcess
import BynarProto
import BynarRuntime
#if canImport(Glibc)
import Glibc
#endif

/// Gluster bricks, one per disk: the disk carries one filesystem mounted at
/// `<mount_root>/<name>` (through ``FilesystemBackend``: the same fstab and mount handling),
/// and the brick is `<mountpoint>/<brick_directory>` of a volume on this host. The id is
/// `VOLUME:HOST:BRICKPATH`.
///
/// - SafeToRemove: ``GlusterSafety/decide(brick:volume:online:heal:)`` on `volume info`,
///   `volume status` and `heal info` (all `--xml`).
/// - Remove: `gluster volume reset-brick VOL HOST:BRICK start` (stops the brick), then the
///   filesystem backend's unmount and fstab removal.
/// - Add: the filesystem backend's mkfs, fstab line and mount at the same mountpoint; the
///   brick directory; `reset-brick VOL HOST:BRICK HOST:BRICK commit force`; `volume heal VOL`;
///   then heal info is polled until nothing is pending in the brick's set, each poll a
///   progress step.
/// Each step reads the world first: a brick already online from this disk is not committed
/// again, an unmounted brick is not reset again.
public struct GlusterBackend: StorageBackend {
    public let name = "gluster"
    public let config: GlusterBackendConfig
    let filesystem: FilesystemBackend
    let host: String

    public init(config: GlusterBackendConfig) {
        self.config = config
        filesystem = FilesystemBackend(config: config.filesystemConfig)
        host = config.brickHost.isEmpty ? localHostName() : config.brickHost
    }

    var timeout: Duration { .seconds(config.commandTimeoutSeconds) }

    /// A brick as this backend names it: volume, "HOST:PATH", and the mountpoint holding it.
    struct BrickID: Equatable {
        var volume: String
        var brick: String
        var mountpoint: String

        var id: String { "\(volume):\(brick)" }
    }

    func brickID(volume: String, mountpoint: String) -> BrickID {
        BrickID(volume: volume, brick: "\(host):\(mountpoint)/\(config.brickDirectory)", mountpoint: mountpoint)
    }

    /// Parses `VOLUME:HOST:PATH`; the path must be `<mountpoint>/<brick_directory>` with the
    /// mountpoint directly under `mount_root`.
    func parse(_ id: String) throws(BackendRefusal) -> BrickID {
        let parts = id.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        let suffix = "/" + config.brickDirectory
        guard parts.count == 3, !parts[0].isEmpty, parts[1] == host, parts[2].hasSuffix(suffix) else {
            throw BackendRefusal("\"\(id)\" is not VOLUME:\(host):<mountpoint>\(suffix)")
        }
        let mountpoint = String(parts[2].dropLast(suffix.count))
        let name = mountpoint.dropFirst(config.mountRoot.count + 1)
        guard mountpoint.hasPrefix(config.mountRoot + "/"), !name.isEmpty, !name.contains("/"), name != ".." else {
            throw BackendRefusal("\"\(id)\": \(mountpoint) is not a mountpoint under \(config.mountRoot)")
        }
        return BrickID(volume: parts[0], brick: "\(host):\(parts[2])", mountpoint: mountpoint)
    }

    /// A present disk is a brick's while it is mounted at that brick's mountpoint. A vanished
    /// one (``BlockDevice/absent``) by the filesystem backend's rules for a vanished disk:
    /// its dead mount or its fstab line still at the mountpoint, in service; neither, out;
    /// another disk there now (its replacement), not this disk's, so nothing of the other is
    /// touched.
    public func claims(_ devices: [BlockDevice]) throws -> [String: BackendClaim] {
        let fstab = devices.contains(where: \.absent) ? try Fstab(path: filesystem.config.fstab) : nil
        var places: [(key: String, place: BackendClaim)] = []
        for device in devices {
            if device.absent {
                if let fstab, let place = filesystem.vanishedClaim(device, mount: FilesystemBackend.mount(at:), fstab: fstab, devicePresent: FilesystemBackend.devicePresent) {
                    places.append((device.identity.key, place))
                }
            } else if let mountpoint = filesystem.managedMountpoint(of: device) {
                places.append((device.identity.key, BackendClaim(backend: filesystem.name, id: mountpoint, status: .inService)))
            }
        }
        guard !places.isEmpty else { return [:] }
        return bricks(of: places, volumes: try volumeInfo())
    }

    /// The brick claims of disks at filesystem places (a mountpoint and whether the disk is in
    /// service there): a place that is a brick of a volume of this host. Pure.
    func bricks(of places: [(key: String, place: BackendClaim)], volumes: [GlusterVolume]) -> [String: BackendClaim] {
        var claims: [String: BackendClaim] = [:]
        for (key, place) in places {
            for volume in volumes {
                let brick = brickID(volume: volume.name, mountpoint: place.id)
                if volume.bricks.contains(brick.brick) {
                    claims[key] = BackendClaim(backend: name, id: brick.id, status: place.status)
                }
            }
        }
        return claims
    }

    public func safeToRemove(_ disk: BlockDevice, claim: BackendClaim) throws -> SafetyAnswer {
        let brick = try parse(claim.id)
        let volume = try volume(brick)
        // Status and heal info fail on a volume that is not started; the rules need them only for a started one.
        guard volume.status == "Started" else { return GlusterSafety.decide(brick: brick.brick, volume: volume, online: [:], heal: nil) }
        let online = try brickStatus(volume.name)
        let heal = try? healInfo(volume.name)
        return GlusterSafety.decide(brick: brick.brick, volume: volume, online: online, heal: heal)
    }

    public func remove(_ disk: BlockDevice, claim: BackendClaim, simulate: Bool, job: JobRun) throws -> OperationResult {
        let brick = try parse(claim.id)
        let volume = try volume(brick)
        let resetStep = "gluster volume reset-brick \(volume.name) \(brick.brick) start"
        let mounted = FilesystemBackend.mount(at: brick.mountpoint) != nil
        let unmount = BackendClaim(backend: filesystem.name, id: brick.mountpoint, status: .inService)
        if simulate {
            let rest = try filesystem.remove(disk, claim: unmount, simulate: true, job: .direct)
            return OperationResult(steps: (mounted || disk.absent ? [resetStep] : ["\(brick.mountpoint) is not mounted: the brick was reset already"]) + rest.steps, backendID: brick.id, skipped: rest.skipped)
        }
        var done: [String] = []
        job.progress.step(resetStep, 1, of: 2)
        // Unmounted only after the reset: a brick whose mount is gone was reset already. A
        // vanished disk's brick is reset whatever is left of its mount (reset-brick start
        // on a brick reset before succeeds again and changes nothing).
        if mounted || disk.absent {
            try gluster(["volume", "reset-brick", volume.name, brick.brick, "start"], step: resetStep, done: done)
            done.append(resetStep)
        } else {
            done.append("\(brick.mountpoint) is not mounted: the brick was reset already")
        }
        job.progress.step("unmount \(brick.mountpoint)", 2, of: 2)
        let rest: OperationResult
        do {
            rest = try filesystem.remove(disk, claim: unmount, simulate: false, job: job.quiet)
        } catch let failure as BackendStepFailure {
            throw BackendStepFailure(step: failure.step, done: done + failure.done, rollback: failure.rollback, underlying: failure.underlying)
        }
        return OperationResult(steps: done + rest.steps, backendID: brick.id, skipped: !mounted && rest.skipped)
    }

    public func add(_ disk: BlockDevice, reuseID: String, simulate: Bool, job: JobRun) throws -> OperationResult {
        let brick = try parse(reuseID)
        let volume = try volume(brick)
        let brickPath = brick.mountpoint + "/" + config.brickDirectory
        let commitStep = "gluster volume reset-brick \(volume.name) \(brick.brick) \(brick.brick) commit force"
        let healStep = "gluster volume heal \(volume.name)"
        let there = FilesystemBackend.mount(at: brick.mountpoint)
        let fromThisDisk = there != nil && there?.devNumber == DeviceNumber(deviceAt: disk.identity.devPath)
        let online = try brickStatus(volume.name)[brick.brick] == true
        if simulate {
            if fromThisDisk && online { return OperationResult(steps: ["\(brick.brick) is online from \(disk.identity.devPath) already", "wait until heal info shows nothing pending"], backendID: brick.id, skipped: true) }
            let format = try filesystem.add(disk, reuseID: brick.mountpoint, simulate: true, job: .direct)
            return OperationResult(steps: format.steps + ["make \(brickPath)", commitStep, healStep, "wait until heal info shows nothing pending"], backendID: brick.id)
        }
        var done: [String] = []
        let count = 4
        job.progress.step("mkfs and mount \(brick.mountpoint)", 1, of: count)
        if fromThisDisk && online {
            done.append("\(brick.brick) is online from \(disk.identity.devPath) already")
        } else {
            if fromThisDisk {
                done.append("\(brick.mountpoint) is mounted from \(disk.identity.devPath) already")
            } else {
                do {
                    done += try filesystem.add(disk, reuseID: brick.mountpoint, simulate: false, job: job.quiet).steps
                } catch let failure as BackendStepFailure {
                    throw BackendStepFailure(step: failure.step, done: done + failure.done, rollback: failure.rollback, underlying: failure.underlying)
                }
            }
            do {
                try FilesystemBackend.makeDirectories(brickPath)
            } catch {
                throw BackendStepFailure(step: "make \(brickPath)", done: done, underlying: "\(error)")
            }
            done.append("make \(brickPath)")
            job.progress.step(commitStep, 2, of: count)
            do {
                try gluster(["volume", "reset-brick", volume.name, brick.brick, brick.brick, "commit", "force"], step: commitStep, done: done)
                done.append(commitStep)
            } catch let failure as BackendStepFailure where fromThisDisk && failure.underlying.contains("must be stopped") {
                // glusterd runs the brick already: the commit was made (a job resumed after
                // a restart read the brick before its process had registered as online).
                guard awaitOnline(volume.name, brick.brick) else { throw failure }
                done.append("\(commitStep): done before (the brick runs from \(disk.identity.devPath))")
            }
        }
        job.progress.step(healStep, 3, of: count)
        done.append(launchHeal(volume.name).map { "\(healStep): not launched (\($0)); the self-heal daemon heals from its index on its own" } ?? healStep)
        done.append(try awaitHeal(volume: volume, brick: brick, done: done, progress: job.progress, index: 4, of: count))
        return OperationResult(steps: done, backendID: brick.id)
    }

    /// Whether `brick` shows online in `volume status` within 30 s.
    func awaitOnline(_ volume: String, _ brick: String) -> Bool {
        for _ in 0..<60 {
            if (try? brickStatus(volume))?[brick] == true { return true }
            usleep(500_000)
        }
        return false
    }

    /// Polls heal info until nothing is pending on the bricks of `brick`'s set, reporting
    /// each reading (what is left, then "done") as a progress step; fails after
    /// `heal_timeout_seconds`.
    func awaitHeal(volume: GlusterVolume, brick: BrickID, done: [String], progress: ProgressReporter, index: Int, of count: Int) throws -> String {
        let set = volume.set(of: brick.brick)
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(config.healTimeoutSeconds)
        var last = "heal info not read yet"
        while true {
            if let heal = try? healInfo(volume.name), let pending = GlusterSafety.pending(in: set, heal: heal),
               set.allSatisfy({ heal.brick($0)?.pending != nil }) {
                if pending == 0 {
                    let done = "heal of \(volume.name) done: nothing pending on \(set.joined(separator: ", "))"
                    progress.step(done, index, of: count)
                    return done
                }
                last = "heal \(volume.name): \(pending) entr\(pending == 1 ? "y" : "ies") pending"
                // Launched again while entries wait: one launch can be refused while a brick
                // is still connecting, and the daemon's own crawl runs only every 10 minutes.
                _ = launchHeal(volume.name)
            } else {
                last = "heal \(volume.name): not every brick of the set answers heal info yet"
            }
            progress.step(last, index, of: count)
            guard clock.now < deadline else {
                throw BackendStepFailure(step: "wait for the heal of \(volume.name)", done: done, underlying: "not done after \(config.healTimeoutSeconds) s: \(last)")
            }
            // Blocking, as every backend call is (the service runs it off the bus's threads).
            sleep(UInt32(config.healPollSeconds))
        }
    }

    public func deploy(_ disk: BlockDevice, simulate: Bool, job: JobRun) throws -> OperationResult {
        throw BackendRefusal("the gluster backend replaces bricks; a new brick changes the volume's layout (gluster volume add-brick), which is its operator's decision")
    }

    /// A brick is out while its mountpoint has nothing mounted (Remove unmounts it last).
    public func isOut(_ id: String) throws -> Bool {
        try filesystem.isOut(parse(id).mountpoint)
    }

    // MARK: gluster CLI

    func volumeInfo(_ volume: String? = nil) throws -> [GlusterVolume] {
        try GlusterVolume.parseInfo(read(["volume", "info"] + (volume.map { [$0] } ?? [])))
    }

    func volume(_ brick: BrickID) throws -> GlusterVolume {
        guard let volume = try volumeInfo(brick.volume).first(where: { $0.name == brick.volume }) else { throw BackendRefusal("no gluster volume \(brick.volume)") }
        guard volume.bricks.contains(brick.brick) else { throw BackendRefusal("\(brick.brick) is not a brick of \(volume.name) (\(volume.bricks.joined(separator: ", ")))") }
        return volume
    }

    func brickStatus(_ volume: String) throws -> [String: Bool] {
        try GlusterStatus.parseOnline(read(["volume", "status", volume]))
    }

    func healInfo(_ volume: String) throws -> GlusterHealInfo {
        try GlusterHealInfo.parse(read(["volume", "heal", volume, "info"]))
    }

    /// `gluster --xml ARGS`; its XML (which carries gluster's own error) or a refusal when it printed none.
    func read(_ arguments: [String]) throws -> String {
        let command = config.glusterCommand + ["--mode=script", "--xml"] + arguments
        let result = try Tool.run(command, timeout: timeout)
        let text = String(decoding: result.output, as: UTF8.self)
        guard text.contains("<cliOutput>") else {
            throw BackendRefusal("\(command.joined(separator: " ")): exit \(result.exitCode.map(String.init) ?? "signal \(result.signal ?? 0)"), no XML")
        }
        return text
    }

    /// `gluster volume heal VOL` (index heal); nil when launched, else why not.
    func launchHeal(_ volume: String) -> String? {
        guard let result = try? Tool.run(config.glusterCommand + ["--mode=script", "volume", "heal", volume], timeout: timeout, mergeStderr: true) else { return "could not run gluster" }
        return result.exitCode == 0 ? nil : String(decoding: result.output, as: UTF8.self).trimmingWhitespace().split(separator: "\n").joined(separator: " ")
    }

    /// A changing gluster command, through the filesystem backend's runner (a step failure with its output).
    func gluster(_ arguments: [String], step: String, done: [String]) throws {
        try filesystem.run(config.glusterCommand + ["--mode=script"] + arguments, step: step, done: done)
    }
}

extension JobRun {
    /// The same job (its id, so its filesystem UUID) with its steps not reported: the
    /// Gluster backend reports its own steps around the filesystem backend's.
    var quiet: JobRun { JobRun(id: id, progress: .ignore) }
}
