import BynarDisks
import BynarProcess
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What `blkid -p` (low-level probing of the device itself: no udev, no blkid cache) finds
/// on a device.
enum SignatureProbe: Sendable, Equatable {
    /// No filesystem, RAID, LVM or partition table signature (blkid exit 2).
    case none
    /// blkid's export fields ("TYPE", "UUID", "PTTYPE", …).
    case found([String: String])
    /// blkid could not tell (it failed, timed out, or found ambivalent signatures).
    case failed(String)

    /// Probes `device` now.
    static func run(_ device: String, timeout: Duration = .seconds(30)) -> SignatureProbe {
        let probe: Tool.Run
        do {
            probe = try Tool.run(["blkid", "-p", "-o", "export", device], timeout: timeout)
        } catch {
            return .failed("\(error)")
        }
        switch probe.exitCode {
        case 2: return .none
        case 0:
            var fields: [String: String] = [:]
            for line in probe.text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
            }
            return .found(fields)
        default:
            return .failed("blkid exit \(probe.exitCode.map(String.init) ?? "signal")")
        }
    }

    /// blkid could not tell.
    var failed: Bool {
        if case .failed = self { return true }
        return false
    }

    /// The filesystem (or RAID/LVM member) type found, if any.
    var type: String? {
        guard case .found(let fields) = self else { return nil }
        return fields["TYPE"]
    }

    /// Its UUID, if it has one.
    var uuid: String? {
        guard case .found(let fields) = self else { return nil }
        return fields["UUID"]
    }
}

/// `blkid -p` answers kept between Lists: probing spawns a process per disk, and a host's
/// unclaimed disks are probed at every List to tell BLANK from carrying data.
///
/// A signature changes without any event (a `mkfs` by hand sends no uevent unless udevd's
/// watch rule asks the kernel for one), so an answer is kept together with a ``Stamp`` of
/// everything through which the disk's content can change on this host, taken before the
/// probe, and reused only while (the rule, ``Entry/answers(_:at:)``):
/// 0. no block uevent arrived since (the service calls ``forgetAll()`` when its inventory
///    saw one: a media change, a partition table re-read, a disk come or gone);
/// 1. the stamp reads the same now: no write or discard completed on the disk (the
///    kernel's counters in /proc/diskstats, which count every write that reaches the disk,
///    the kernel's own included), no write(2) through its device node (the node's mtime
///    and ctime, set when the write starts, before its data reaches the page cache that
///    blkid reads), the same size, and, for a loop device, no change of its backing file
///    (inode, size, mtime, ctime: writes that bypass the loop device);
/// 2. the newest of those times was at least ``settle`` older than the probe: a write in
///    the same clock tick as an earlier one leaves the time as it was, so an answer probed
///    that soon after a write is not kept;
/// 3. the answer is younger than ``maxAge``: a bound for what no stamp sees (a disk
///    rewritten from outside this host, a passthrough command such as an NVMe format).
/// A disk whose I/O statistics are off (`queue/iostats` 0), or whose stamp cannot be read,
/// is probed every time. List only reports what it finds; Add and Deploy probe afresh
/// before they format anything (``DiskChecks/whyNotBlank(_:probe:)``).
final class SignatureCache: Sendable {
    /// How the disk's content could have changed, as read at one moment.
    struct Stamp: Sendable, Equatable {
        /// stat(2) of a file: which inode, and when it last changed.
        struct FileStamp: Sendable, Equatable {
            var device: UInt64
            var inode: UInt64
            var size: Int64
            var modifiedNs: Int64
            var changedNs: Int64

            init(device: UInt64, inode: UInt64, size: Int64, modifiedNs: Int64, changedNs: Int64) {
                self.device = device
                self.inode = inode
                self.size = size
                self.modifiedNs = modifiedNs
                self.changedNs = changedNs
            }

            init?(path: String) {
                var info = stat()
                guard stat(path, &info) == 0 else { return nil }
                self.init(device: UInt64(info.st_rdev == 0 ? info.st_dev : info.st_rdev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                          modifiedNs: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
                          changedNs: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec))
            }
        }

        /// The disk's size in bytes (the inventory's, which a look checks against sysfs).
        var size: UInt64
        /// /proc/diskstats: writes completed, sectors written, discards, sectors discarded.
        var writes: [String]
        /// The device node.
        var node: FileStamp
        /// A loop device's backing file.
        var backing: FileStamp?

        /// When anything of the stamp last changed (wall clock, ns).
        var newestChangeNs: Int64 {
            [node.modifiedNs, node.changedNs, backing?.modifiedNs ?? 0, backing?.changedNs ?? 0].max() ?? 0
        }

        /// The stamp of `device` now, its write counters taken from `counters`
        /// (``SignatureCache/writeCounters(of:)``, read once for all disks); nil when it cannot
        /// be read or the disk keeps no I/O statistics (then nothing tells a write, and the
        /// disk is probed every time).
        static func read(_ device: BlockDevice, counters: [String: [String]]) -> Stamp? {
            let sys = device.sysPath
            guard !device.absent, !sys.isEmpty, let writes = counters[SignatureCache.kernelName(device)],
                  case let .success(iostats) = readFile(sys + "/queue/iostats"),
                  String(decoding: iostats, as: UTF8.self).trimmingWhitespace() == "1",
                  let node = FileStamp(path: device.identity.devPath)
            else { return nil }
            var backing: FileStamp?
            if device.identity.transport == .loop {
                // The inventory's: a loop device gets another file only through a detach
                // and an attach, each a uevent.
                guard let found = FileStamp(path: device.identity.backingFile) else { return nil }
                backing = found
            }
            return Stamp(size: device.identity.sizeBytes, writes: writes, node: node, backing: backing)
        }
    }

    /// The write counters of the block devices named in `names` now (kernel name ->
    /// fields 8, 10, 15 and 17 of /proc/diskstats: writes completed, sectors written,
    /// discards completed, sectors discarded), one read for all disks; empty when it cannot
    /// be read.
    static func writeCounters(of names: Set<String>) -> [String: [String]] {
        guard !names.isEmpty, case let .success(bytes) = readFile("/proc/diskstats") else { return [:] }
        var counters: [String: [String]] = [:]
        // As bytes: a host has hundreds of lines here, and only a few are wanted.
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count > 9, case let name = String(decoding: fields[2], as: UTF8.self), names.contains(name) else { continue }
            counters[name] = [7, 9, 14, 16].filter { $0 < fields.count }.map { String(decoding: fields[$0], as: UTF8.self) }
        }
        return counters
    }

    /// The kernel name of `device` (the last component of its sysfs path), as
    /// /proc/diskstats names it.
    static func kernelName(_ device: BlockDevice) -> String {
        device.sysPath.split(separator: "/").last.map(String.init) ?? ""
    }

    /// One kept answer.
    struct Entry: Sendable, Equatable {
        var stamp: Stamp
        var probe: SignatureProbe
        /// When the probe started: wall clock (ns), and the monotonic clock.
        var probedNs: Int64
        var probedAt: ContinuousClock.Instant

        /// Whether this answer is still the disk's, given its stamp now (the rule above).
        func answers(_ now: Stamp?, at instant: ContinuousClock.Instant) -> Bool {
            guard let now, now == stamp else { return false }
            return stamp.newestChangeNs < probedNs - SignatureCache.settleNs && instant - probedAt < SignatureCache.maxAge
        }
    }

    /// How long after the last change of the disk an answer is probed before it is kept.
    static let settleNs: Int64 = 1_000_000_000
    /// How long an answer is kept at most.
    static let maxAge: Duration = .seconds(300)

    private let entries = Mutex<[String: Entry]>([:])

    init() {}

    /// The kept answer for `device` when the rule allows it now, else nil (probe it).
    /// Reads sysfs and stat(2) only, never the disk.
    func keptAnswer(_ device: BlockDevice, counters: [String: [String]]) -> SignatureProbe? {
        guard let kept = entries.withLock({ $0[device.identity.devPath] }),
              kept.answers(Stamp.read(device, counters: counters), at: ContinuousClock.now)
        else { return nil }
        return kept.probe
    }

    /// What `blkid -p` finds on `device`: the kept answer when the rule allows, else a new
    /// probe (`run`), kept when its stamp could be read and it did not fail. `counters`:
    /// ``writeCounters(of:)`` read for this look.
    func probe(_ device: BlockDevice, counters: [String: [String]], run: (String) -> SignatureProbe = { SignatureProbe.run($0) }) -> SignatureProbe {
        let path = device.identity.devPath
        let stamp = Stamp.read(device, counters: counters)
        let instant = ContinuousClock.now
        if let kept = entries.withLock({ $0[path] }), kept.answers(stamp, at: instant) { return kept.probe }
        var wall = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        let probe = run(path)
        var entry: Entry?
        if let stamp, !probe.failed {
            entry = Entry(stamp: stamp, probe: probe, probedNs: Int64(wall.tv_sec) * 1_000_000_000 + Int64(wall.tv_nsec), probedAt: instant)
        }
        entries.withLock { $0[path] = entry }
        return probe
    }

    /// Forgets every kept answer: the disk-manager changed a disk, or a block uevent came.
    func forgetAll() {
        entries.withLock { $0.removeAll() }
    }
}
