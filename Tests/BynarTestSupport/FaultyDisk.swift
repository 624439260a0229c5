import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real block device whose failures a test controls: an image file behind faultfs (a FUSE
/// file that fails chosen sectors, Tools/faultfs), a loop device on top, optionally a
/// filesystem mounted from it. The kernel's I/O errors, kmsg lines and filesystem reactions
/// are real. Everything is torn down by name on ``teardown()`` and on deinit, also when a
/// test fails.
public final class FaultyDisk: @unchecked Sendable {
    /// Why FaultyDisk cannot run here, or nil when it can (root, /dev/fuse, loop devices,
    /// a built or buildable faultfs).
    public static let unavailableReason: String? = {
        if getuid() != 0 { return "needs root for loop devices and mounts" }
        for device in ["/dev/fuse", "/dev/loop-control"] where access(device, F_OK) != 0 { return "\(device) is missing" }
        return faultfsPath == nil ? "faultfs could not be built (scripts/build-faultfs)" : nil
    }()
    public static var available: Bool { unavailableReason == nil }

    /// `.build-tools/faultfs`, built with scripts/build-faultfs when missing.
    static let faultfsPath: String? = {
        let path = "\(packageRoot)/.build-tools/faultfs"
        if access(path, X_OK) == 0 { return path }
        guard let build = try? ChildProcess("/bin/bash", ["\(packageRoot)/scripts/build-faultfs"]) else { return nil }
        _ = build.waitForExit(timeout: .seconds(300))
        return access(path, X_OK) == 0 ? path : nil
    }()

    public let directory: String
    public let image: String
    /// The loop device, e.g. `/dev/loop3`.
    public let device: String
    /// Its kernel name, e.g. `loop3`.
    public var name: String { String(device.split(separator: "/").last ?? "") }
    /// Where the filesystem is mounted, when one was made.
    public let mountpoint: String?
    private let fuseMount: String
    private let faultfs: ChildProcess
    private let lock = NSLock()
    private var tornDown = false
    private var detached = false

    /// Creates a `sizeMB` image (in a fresh temp dir, or at `image` to reuse a file), puts
    /// faultfs and a loop device on it (direct I/O, so rules apply without dropping caches)
    /// and, with `filesystem`, makes and mounts one (`mountOptions` for mount -o).
    /// `loopDevice` attaches to that device (e.g. to put a new disk in the same slot)
    /// instead of the first free one.
    /// `mount: false` makes the filesystem but leaves it unmounted.
    /// `directory` puts everything in that (new or empty) directory instead of a fresh temp
    /// dir: the loop device's backing file, which is the disk's serial, then names it
    /// (`<work>/h2/s07-g1/fuse/disk`: scripts/chaos gives each host's disks their own path).
    public init(sizeMB: Int, filesystem: String? = nil, mountOptions: String = "errors=remount-ro", image existing: String? = nil, loopDevice: String? = nil, mount: Bool = true, directory chosen: String? = nil) throws {
        guard let faultfsPath = FaultyDisk.faultfsPath else { throw TestSupportError(FaultyDisk.unavailableReason ?? "no faultfs") }
        if let chosen {
            try FileManager.default.createDirectory(atPath: chosen, withIntermediateDirectories: true)
            directory = chosen
        } else {
            directory = try makeTemporaryDirectory(prefix: "bynar-faulty")
        }
        image = existing ?? "\(directory)/disk.img"
        fuseMount = "\(directory)/fuse"
        try FileManager.default.createDirectory(atPath: fuseMount, withIntermediateDirectories: true)
        if existing == nil { try FaultyDisk.run("/usr/bin/truncate", ["-s", "\(sizeMB)M", image]) }
        faultfs = try ChildProcess(faultfsPath, [image, fuseMount, "-f"], outputPath: "\(directory)/faultfs.log")
        let deadline = Date().addingTimeInterval(10)
        while access("\(fuseMount)/disk", F_OK) != 0 {
            guard Date() < deadline, faultfs.isRunning else {
                faultfs.stop(SIGKILL)
                throw TestSupportError("faultfs did not come up: \((try? String(contentsOfFile: "\(directory)/faultfs.log", encoding: .utf8)) ?? "")")
            }
            usleep(20_000)
        }
        let loop: String
        do {
            loop = try FaultyDisk.run("/sbin/losetup", (loopDevice.map { ["--show", $0] } ?? ["--find", "--show"]) + ["--direct-io=on", "\(fuseMount)/disk"])
        } catch {
            // No loop device (the /dev name is taken): leave no FUSE mount behind.
            _ = try? FaultyDisk.run("/bin/fusermount3", ["-u", fuseMount])
            faultfs.stop(SIGTERM, timeout: .seconds(5))
            throw error
        }
        device = loop.trimmingCharacters(in: .whitespacesAndNewlines)
        var mounted: String?
        do {
            if let filesystem {
                let mkfs = filesystem == "xfs" ? ["/sbin/mkfs.xfs", "-q", "-f", device] : ["/sbin/mkfs.\(filesystem)", "-q", "-b", "4096", device]
                try FaultyDisk.run(mkfs[0], Array(mkfs.dropFirst()))
            }
            if filesystem != nil, mount {
                let target = "\(directory)/mnt"
                try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
                try FaultyDisk.run("/bin/mount", ["-o", mountOptions, device, target])
                mounted = target
            }
        } catch {
            mountpoint = nil
            teardown()
            throw error
        }
        mountpoint = mounted
    }

    /// The loop device's backing file: for the inventory, the disk's serial.
    public var backingFile: String { fuseMount + "/disk" }

    /// Whether the loop device still has this disk's file behind it (once detached, the
    /// /dev name may be someone else's disk).
    public var loopIsOurs: Bool {
        let backing = (try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return backing == backingFile || backing == backingFile + " (deleted)"
    }

    /// Sends faultfs control commands (`fail START COUNT`, `fail-writes ...`, `delay MS`,
    /// `vanish [ERRNO]`, `clear`).
    public func control(_ commands: String) throws {
        try (commands.hasSuffix("\n") ? commands : commands + "\n").write(toFile: "\(fuseMount)/control", atomically: false, encoding: .utf8)
    }

    /// Detaches the loop device (the disk leaves the system) but keeps the rest until
    /// ``teardown()``.
    public func detach() throws {
        guard !lock.withLock({ detached }) else { return }
        if let mountpoint { _ = try? FaultyDisk.run("/bin/umount", ["-l", mountpoint]) }
        if loopIsOurs { try FaultyDisk.run("/sbin/losetup", ["-d", device]) }
        lock.withLock { detached = true }
    }

    /// Unmounts, detaches the loop device by name, unmounts faultfs, stops it, removes files.
    /// Safe to call more than once.
    public func teardown() {
        let first = lock.withLock { () -> Bool in
            defer { tornDown = true }
            return !tornDown
        }
        guard first else { return }
        try? control("clear")
        if let mountpoint { _ = try? FaultyDisk.run("/bin/umount", ["-l", mountpoint]) }
        // Whatever else mounted the device (a disk-manager under test) is unmounted too.
        if !lock.withLock({ detached }), loopIsOurs {
            for other in FaultyDisk.mountpoints(of: device) { _ = try? FaultyDisk.run("/bin/umount", ["-l", other]) }
        }
        // Once detached, the device may already belong to someone else: leave it alone.
        for _ in 0..<20 where !lock.withLock({ detached }) {
            if !loopIsOurs || (try? FaultyDisk.run("/sbin/losetup", ["-d", device])) != nil { break }
            usleep(100_000)
        }
        for _ in 0..<20 {
            if (try? FaultyDisk.run("/bin/fusermount3", ["-u", fuseMount])) != nil { break }
            usleep(100_000)
        }
        faultfs.stop(SIGTERM, timeout: .seconds(5))
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { teardown() }

    /// Where `device` is mounted now (from /proc/self/mountinfo).
    public static func mountpoints(of device: String) -> [String] {
        guard let text = readProcFile("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count, fields[dash + 2] == device else { return nil }
            return String(fields[4])
        }
    }

    /// Runs a command; throws with its output when it fails.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(60)) throws -> String {
        let log = "/tmp/bynar-cmd-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try ChildProcess(executable, arguments, outputPath: log)
        _ = process.waitForExit(timeout: timeout)
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        guard process.exitCode == 0 else {
            throw TestSupportError("\(executable) \(arguments.joined(separator: " ")) failed (\(String(describing: process.exitStatus))): \(output)")
        }
        return output
    }
}

/// The whole of a /proc file. `String(contentsOfFile:)` stops after the first 4 KiB of a
/// file whose size stat() reports as 0, which a machine with many mounts (tests, chaos runs
/// and other engineers' loop devices) passes: the mounts past that point went unseen.
public func readProcFile(_ path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}
