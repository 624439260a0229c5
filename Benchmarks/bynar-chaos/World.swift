import BynarTestSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension FaultyDisk {
    /// The disk key the detector, orchestrator and disk-manager use for it: a loop device is
    /// known by its backing file, which names the host (`<work>/h2/s07-g1/fuse/disk`), so
    /// `disk_manager.manage_only` and `detector.watch_only` can match each host's own disks.
    var key: String {
        "serial-" + String(backingFile.unicodeScalars.map { scalar -> Character in
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
        chmod(configPath, 0o600)  // it holds the broker password (the services warn otherwise)
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
