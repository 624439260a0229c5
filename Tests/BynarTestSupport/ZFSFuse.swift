import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A zfs-fuse daemon for one test suite and a raidz pool on loop devices behind faultfs
/// (``FaultyDisk``), so a member's I/O errors are real kernel errors. ``teardown()`` (also
/// on deinit, so also when a test fails) destroys the pool, detaches the loop devices by
/// name and stops the daemon by its pid (SIGTERM, SIGKILL after 10 s).
public final class ZFSFusePool: @unchecked Sendable {
    /// Why zfs-fuse cannot run here, or nil.
    public static let unavailableReason: String? = {
        if let reason = FaultyDisk.unavailableReason { return reason }
        for tool in ["/usr/sbin/zfs-fuse", "/usr/sbin/zpool"] where access(tool, X_OK) != 0 { return "\(tool) is missing (scripts/install-deps installs zfs-fuse)" }
        if access("/var/run/zfs/zfs_socket", F_OK) == 0 || daemonRunning() { return "a zfs-fuse daemon is already running on this machine" }
        // A started zfs-fuse imports every pool in its cache, on whatever devices now have
        // those names; the tests' pools are made with cachefile=none and never go there.
        if let size = try? FileManager.default.attributesOfItem(atPath: cacheFile)[.size] as? Int, size > 0 {
            return "\(cacheFile) lists pools; starting zfs-fuse would import them"
        }
        return nil
    }()
    public static var available: Bool { unavailableReason == nil }

    static let cacheFile = "/var/lib/zfs/zpool.cache"

    public let directory: String
    public let name: String
    public let members: [FaultyDisk]
    /// Where the pool's root dataset is mounted.
    public let mountpoint: String
    private let pidFile: String
    private let lock = NSLock()
    private var tornDown = false

    /// Starts zfs-fuse and creates `name` as one top-level vdev of `memberCount` disks of
    /// `sizeMB`: a raidz1, or with `layout` "mirror" a mirror.
    public init(name: String, memberCount: Int = 3, sizeMB: Int = 128, layout: String = "raidz") throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-zfs")
        self.name = name
        pidFile = "\(directory)/zfs-fuse.pid"
        mountpoint = "\(directory)/mnt"
        _ = try FaultyDisk.run("/usr/sbin/zfs-fuse", ["--pidfile", pidFile, "--no-kstat-mount"])
        var made: [FaultyDisk] = []
        do {
            let deadline = Date().addingTimeInterval(20)
            while (try? FaultyDisk.run("/usr/sbin/zpool", ["list"])) == nil {
                guard Date() < deadline else { throw TestSupportError("zfs-fuse did not answer within 20 s") }
                usleep(100_000)
            }
            for _ in 0..<memberCount { made.append(try FaultyDisk(sizeMB: sizeMB)) }
            _ = try FaultyDisk.run("/usr/sbin/zpool", ["create", "-f", "-o", "cachefile=none", "-m", mountpoint, name, layout] + made.map(\.device))
        } catch {
            members = made
            teardown()
            throw error
        }
        members = made
    }

    /// Runs `zpool ARGUMENTS`; its output.
    @discardableResult
    public func zpool(_ arguments: [String]) throws -> String {
        try FaultyDisk.run("/usr/sbin/zpool", arguments)
    }

    /// `zpool status POOL`, re-read until `condition` holds or `timeout` passes; the last text.
    public func status(until condition: (String) -> Bool, timeout: Duration = .seconds(60)) -> String {
        let deadline = ContinuousClock.now + timeout
        var last = ""
        while true {
            last = (try? zpool(["status", name])) ?? last
            if condition(last) || ContinuousClock.now >= deadline { return last }
            usleep(200_000)
        }
    }

    public func teardown() {
        let first = lock.withLock { () -> Bool in
            defer { tornDown = true }
            return !tornDown
        }
        guard first else { return }
        // Faults off first: a pool whose member still fails every write may refuse to go.
        for member in members { try? member.control("clear") }
        var destroyed = false
        for _ in 0..<10 where !destroyed {
            destroyed = (try? zpool(["destroy", "-f", name])) != nil || (try? zpool(["list", name])) == nil
            if !destroyed { usleep(500_000) }
        }
        if !destroyed { FileHandle.standardError.write("ZFSFusePool: could not destroy \(name)\n".data(using: .utf8)!) }
        for member in members { member.teardown() }
        stopDaemon()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func stopDaemon() {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { return }
        kill(pid, SIGTERM)
        for _ in 0..<100 {
            if kill(pid, 0) != 0 { return }
            usleep(100_000)
        }
        kill(pid, SIGKILL)
        for _ in 0..<50 where kill(pid, 0) == 0 { usleep(100_000) }
    }

    /// Whether any zfs-fuse process runs (from /proc, by executable name).
    static func daemonRunning() -> Bool {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.contains { entry in
            guard Int32(entry) != nil, let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8) else { return false }
            // "PID (comm) STATE ...": a zombie is no daemon.
            return stat.contains("(zfs-fuse) ") && !stat.contains("(zfs-fuse) Z")
        }
    }

    deinit { teardown() }
}
