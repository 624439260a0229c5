// The inventory kept between looks, for a service asked often (the disk-manager's List): a
// full scan (libudev, sysfs, mountinfo, /proc/swaps, /dev/disk) is taken again only when
// the host says something it rests on may have changed, and that is asked synchronously at
// every look, never by a thread that might not have caught up:
//
//   look ──► InventoryWatch.changes() ── a block uevent (kernel's or udevd's), a lost one,
//            │                            the mount table or the swap areas changed ──► scan
//            ▼
//           the sysfs values the kernel changes without an event, read again
//           (sizes, queue/rotational) ── any differs ──► scan
//            ▼
//           the kept devices
//
// The kernel queues a uevent, and bumps the mount table's and /proc/swaps' poll event,
// before the system call that made the change returns; the watch looks with a zero
// timeout, so a change finished before a look is always seen by that look. The watch is
// consumed before a scan, not after, so a change during a scan is seen by the next look.

import Glibc

/// What may have changed on the host since the last look.
public struct InventoryChanges: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// A block device uevent arrived (add, remove, change; the kernel's or udevd's).
    public static let blockDevices = InventoryChanges(rawValue: 1 << 0)
    /// Block uevents were lost (the socket overflowed): anything may have changed.
    public static let lostEvents = InventoryChanges(rawValue: 1 << 1)
    /// The mount table changed (mount, umount, remount, move).
    public static let mounts = InventoryChanges(rawValue: 1 << 2)
    /// A swap area was turned on or off.
    public static let swaps = InventoryChanges(rawValue: 1 << 3)
    /// A sysfs value the kernel changes without an event (a size, queue/rotational) differs.
    public static let sysfsValues = InventoryChanges(rawValue: 1 << 4)
    /// The owner said it changed the host (``InventoryCache/invalidate()``).
    public static let invalidated = InventoryChanges(rawValue: 1 << 5)
    /// Nothing is watched (the watch could not be opened or broke): every look scans.
    public static let unwatched = InventoryChanges(rawValue: 1 << 6)

    public var description: String {
        let names: [(InventoryChanges, String)] = [
            (.blockDevices, "block uevent"), (.lostEvents, "lost uevents"), (.mounts, "mount table"), (.swaps, "swap areas"),
            (.sysfsValues, "sysfs value"), (.invalidated, "invalidated"), (.unwatched, "unwatched"),
        ]
        return names.filter { contains($0.0) }.map(\.1).joined(separator: ", ")
    }
}

/// The host's notifications that the inventory may have changed, looked at without waiting.
///
/// Holds the kernel's block uevent socket (no udevd needed), udevd's (its database and
/// /dev/disk links are updated after the kernel's event: its own event says they are), and
/// open /proc/self/mountinfo and /proc/swaps, which poll(2) with POLLPRI|POLLERR once per
/// change of the table. No thread: the sockets queue events until the next look. One owner
/// at a time.
final class InventoryWatch {
    private let kernel: UdevKernelMonitor
    private let udevd: UdevKernelMonitor?
    private let mountInfo: Int32
    private let swaps: Int32
    private var broken = false

    /// The most messages one look reads from a socket; more are read by the next look
    /// (which scans again: safe, only slower).
    static let drainLimit = 4096

    /// Opens the sockets and tables. Throws when the kernel's uevent socket or the mount
    /// table cannot be opened (without them nothing could be trusted between scans).
    init(roots: InventoryRoots = .live) throws {
        do {
            kernel = try UdevKernelMonitor(source: .kernel, receiveBufferBytes: 4 << 20)
        } catch let error as UdevError {
            throw InventoryError.system(error.description)
        }
        // udevd not running: a socket that receives nothing, harmless.
        udevd = try? UdevKernelMonitor(source: .udev, receiveBufferBytes: 4 << 20)
        mountInfo = open(roots.mountInfoPath, O_RDONLY | O_CLOEXEC)
        guard mountInfo >= 0 else { throw InventoryError.unreadable(path: roots.mountInfoPath, errno: errno) }
        // A kernel without swap has no /proc/swaps, and nothing to watch there.
        swaps = open(roots.swapsPath, O_RDONLY | O_CLOEXEC)
    }

    deinit {
        close(mountInfo)
        if swaps >= 0 { close(swaps) }
    }

    /// What changed since the last call (consumed: the next call reports only what comes
    /// after this one). Never waits.
    func changes() -> InventoryChanges {
        var changes: InventoryChanges = broken ? .unwatched : []
        for monitor in [kernel, udevd].compactMap({ $0 }) {
            changes.formUnion(drain(monitor))
        }
        var tables = [pollfd(fd: mountInfo, events: Int16(POLLPRI), revents: 0), pollfd(fd: swaps, events: Int16(POLLPRI), revents: 0)]
        var ready: Int32
        repeat {
            ready = poll(&tables, nfds_t(tables.count), 0)
        } while ready < 0 && errno == EINTR
        if ready < 0 {
            broken = true
            return changes.union(.unwatched)
        }
        for (table, change) in zip(tables, [InventoryChanges.mounts, .swaps]) where table.fd >= 0 {
            if table.revents & Int16(POLLNVAL) != 0 {
                broken = true
                changes.insert(.unwatched)
            } else if table.revents & Int16(POLLPRI | POLLERR) != 0 {
                changes.insert(change)
            }
        }
        return changes
    }

    private func drain(_ monitor: UdevKernelMonitor) -> InventoryChanges {
        var changes: InventoryChanges = []
        for _ in 0..<Self.drainLimit {
            switch monitor.next(waitMs: 0) {
            case .event: changes.insert(.blockDevices)
            case .lost: changes.insert(.lostEvents)
            case .other: continue
            case .quiet: return changes
            case .failed:
                broken = true
                return changes.union(.unwatched)
            }
        }
        return changes.union(.blockDevices) // more queued than one look reads
    }
}

/// The host's whole block devices as ``Inventory/scan(host:excluded:only:roots:)`` lists
/// them, kept between looks and scanned again whenever the host says they may have changed
/// (see the top of this file): a look answers what a scan at that moment would.
///
/// Not thread-safe: one owner (an actor) at a time.
public final class InventoryCache {
    /// What a look answered and why it scanned, if it did.
    public struct Look: Sendable {
        public var devices: [BlockDevice]
        /// Why this look scanned; empty when it answered from the kept scan.
        public var scannedBecause: InventoryChanges
    }

    private struct Kept {
        var devices: [BlockDevice]
        var unevented: [String: String]
    }

    let host: String
    let excluded: [String]
    let only: [String]
    private let watch: InventoryWatch?
    private var kept: Kept?

    /// The inventory of `host` with `excluded` and `only` as for ``Inventory/scan(host:excluded:only:roots:)``
    /// (the live system). When the watch cannot be opened (no netlink in this network
    /// namespace), every look scans; ``watchError`` says why.
    public init(host: String, excluded: [String], only: [String] = []) {
        self.host = host
        self.excluded = excluded
        self.only = only
        do {
            watch = try InventoryWatch()
            watchError = nil
        } catch {
            watch = nil
            watchError = error
        }
    }

    /// Why nothing is watched (every look scans), or nil.
    public let watchError: (any Error)?

    /// The devices now: the kept scan if nothing it rests on has changed, else a new scan.
    /// Throws as ``Inventory/scan(host:excluded:only:roots:)`` does.
    public func look() throws -> Look {
        var changes = watch?.changes() ?? .unwatched
        if let kept {
            if changes.isEmpty && !Self.sameValues(kept.unevented) { changes.insert(.sysfsValues) }
            if changes.isEmpty { return Look(devices: kept.devices, scannedBecause: []) }
        } else {
            changes.insert(.invalidated)
        }
        let scanned = try scan()
        return Look(devices: scanned.devices, scannedBecause: changes.union(scanned.scannedBecause))
    }

    /// A scan now, whatever the watch says (for a look that must read the world itself);
    /// kept for the looks after it. `scannedBecause`: what the watch had seen since the
    /// last look (empty when nothing).
    public func scan() throws -> Look {
        kept = nil
        // Before the scan: what changes during it is the next look's.
        let changes = watch?.changes() ?? .unwatched
        let snapshot = try InventorySnapshot.gather(roots: .live)
        let devices = Inventory.devices(of: snapshot, host: host, excluded: excluded, only: only)
        kept = Kept(devices: devices, unevented: snapshot.uneventedValues())
        return Look(devices: devices, scannedBecause: changes)
    }

    /// Forgets the kept scan: the owner changed the host (a mkfs sends no uevent), so the
    /// next look scans.
    public func invalidate() {
        kept = nil
    }

    /// Whether every value in `values` (sysfs path -> value as scanned) reads the same now.
    static func sameValues(_ values: [String: String]) -> Bool {
        values.allSatisfy { path, value in
            guard case let .success(bytes) = readFile(path) else { return false }
            return String(decoding: bytes, as: UTF8.self).trimmingWhitespace() == value
        }
    }
}
