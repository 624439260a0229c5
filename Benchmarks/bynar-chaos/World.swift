import BynarTestSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One disk of a chaos host: an image behind faultfs (a FUSE file that fails chosen
/// sectors), a loop device on top. Everything lives in `directory`, which names the host
/// (`<work>/h2/s07-g1`), so the loop device's backing file, which is the disk's serial
/// and key, says whose disk it is: `disk_manager.manage_only` and `detector.watch_only`
/// match it.
final class ChaosDisk: @unchecked Sendable {
    let directory: String
    let device: String
    let sizeMB: Int
    private let fuseMount: String
    private let faultfs: ChildProcess
    private let lock = NSLock()
    private var detached = false
    private var gone = false

    /// The loop device's backing file (its serial for the inventory).
    var backingFile: String { fuseMount + "/disk" }
    /// The disk key the detector, orchestrator and disk-manager use.
    var key: String { "serial-" + ChaosDisk.sanitize(backingFile) }

    init(directory: String, sizeMB: Int, faultfsPath: String, loopDevice: String? = nil) throws {
        self.directory = directory
        self.sizeMB = sizeMB
        fuseMount = directory + "/fuse"
        try FileManager.default.createDirectory(atPath: fuseMount, withIntermediateDirectories: true)
        try FaultyDisk.run("/usr/bin/truncate", ["-s", "\(sizeMB)M", directory + "/disk.img"])
        faultfs = try ChildProcess(faultfsPath, [directory + "/disk.img", fuseMount, "-f"], outputPath: directory + "/faultfs.log")
        let deadline = Date().addingTimeInterval(10)
        while access(fuseMount + "/disk", F_OK) != 0 {
            guard Date() < deadline, faultfs.isRunning else {
                faultfs.stop(SIGKILL)
                throw TestSupportError("faultfs did not come up in \(directory)")
            }
            usleep(20_000)
        }
        do {
            let arguments = (loopDevice.map { ["--show", $0] } ?? ["--find", "--show"]) + ["--direct-io=on", fuseMount + "/disk"]
            device = try FaultyDisk.run("/sbin/losetup", arguments).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            _ = try? FaultyDisk.run("/bin/fusermount3", ["-u", fuseMount])
            faultfs.stop(SIGTERM)
            throw error
        }
    }

    /// faultfs control commands (`fail 0 N`, `vanish EIO`, `clear`).
    func control(_ commands: String) throws {
        try (commands + "\n").write(toFile: fuseMount + "/control", atomically: false, encoding: .utf8)
    }

    /// Whether the loop device still has this disk's file behind it (it may be someone
    /// else's once detached).
    var loopIsOurs: Bool {
        let name = device.split(separator: "/").last.map(String.init) ?? ""
        let backing = (try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return backing == backingFile || backing == backingFile + " (deleted)"
    }

    /// The technician pulls the disk: the loop device is detached (by name, only while it
    /// is still this disk's).
    func detach() throws {
        guard lock.withLock({ !detached }) else { return }
        if loopIsOurs { try FaultyDisk.run("/sbin/losetup", ["-d", device]) }
        lock.withLock { detached = true }
    }

    /// Unmounts whatever still mounts the device (only while it is ours), detaches it, unmounts
    /// faultfs, stops it. Safe to call more than once.
    func teardown() {
        let first = lock.withLock { () -> Bool in defer { gone = true }; return !gone }
        guard first else { return }
        try? control("clear")
        if !lock.withLock({ detached }), loopIsOurs {
            for mountpoint in FaultyDisk.mountpoints(of: device) { _ = try? FaultyDisk.run("/bin/umount", ["-l", mountpoint]) }
            for _ in 0..<20 {
                if !loopIsOurs || (try? FaultyDisk.run("/sbin/losetup", ["-d", device])) != nil { break }
                usleep(100_000)
            }
            lock.withLock { detached = true }
        }
        for _ in 0..<20 {
            if (try? FaultyDisk.run("/bin/fusermount3", ["-u", fuseMount])) != nil { break }
            usleep(100_000)
        }
        faultfs.stop(SIGTERM, timeout: .seconds(5))
        try? FileManager.default.removeItem(atPath: directory + "/disk.img")
    }

    static func sanitize(_ text: String) -> String {
        String(text.unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "a"..."z", "0"..."9", ".", "_", "-": Character(scalar)
            default: "_"
            }
        })
    }
}

/// A real Bynar service binary with its config and store, started, killed with SIGKILL (its
/// whole process group) and restarted by the chaos loop. Its log is appended across restarts,
/// each start marked.
final class ManagedService: @unchecked Sendable {
    let name: String
    let executable: String
    let configPath: String
    let logPath: String
    private let lock = NSLock()
    private var process: ChildProcess?
    private(set) var starts = 0
    /// Exits nobody asked for (status and when), seen by ``reapIfExited()``.
    private(set) var unexpectedExits: [String] = []

    init(name: String, executable: String, directory: String, config: String) throws {
        self.name = name
        self.executable = executable
        configPath = directory + "/bynar.json"
        logPath = directory + "/\(executable).log"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    var pid: pid_t? { lock.withLock { process?.pid } }

    func start() throws {
        let number = lock.withLock { () -> Int in starts += 1; return starts }
        if let handle = FileHandle(forWritingAtPath: logPath) ?? { FileManager.default.createFile(atPath: logPath, contents: nil); return FileHandle(forWritingAtPath: logPath) }() {
            handle.seekToEndOfFile()
            handle.write(Data("==== chaos: start \(number) of \(name) at \(Date())\n".utf8))
            try? handle.close()
        }
        let child = try ChildProcess(builtExecutable(executable), ["--config", configPath], outputPath: logPath)
        lock.withLock { process = child }
    }

    /// kill -9 of the whole process group, then waits for the exit.
    func kill9() {
        guard let child = lock.withLock({ () -> ChildProcess? in defer { process = nil }; return process }) else { return }
        kill(-child.pid, SIGKILL)
        _ = child.waitForExit(timeout: .seconds(10))
    }

    /// SIGTERM to the group, SIGKILL after `timeout`.
    func stop(timeout: Duration = .seconds(15)) {
        guard let child = lock.withLock({ () -> ChildProcess? in defer { process = nil }; return process }) else { return }
        kill(-child.pid, SIGTERM)
        if child.waitForExit(timeout: timeout) == nil {
            kill(-child.pid, SIGKILL)
            _ = child.waitForExit(timeout: .seconds(5))
        }
    }

    /// When it exited on its own, records that and returns true (the caller restarts it, as
    /// systemd's Restart=always would).
    func reapIfExited() -> Bool {
        lock.withLock {
            guard let child = process, !child.isRunning else { return false }
            let status = child.exitStatus ?? -1
            let how = status & 0x7f == 0 ? "exit \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
            unexpectedExits.append("\(how) at \(Date())")
            process = nil
            return true
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}
