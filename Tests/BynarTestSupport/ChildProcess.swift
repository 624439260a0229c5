import BynarProcess
public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn and a clean signal mask.
///
/// Foundation's Process passes on the spawning thread's signal mask, and Swift's
/// concurrency threads block SIGTERM, SIGINT and SIGHUP; a broker or service started that
/// way never sees SIGTERM. This one resets the mask and every signal's disposition.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private let lock = NSLock()
    private var status: Int32?

    /// Starts `executable` with `arguments`; stdin comes from `inputPath`, stdout and
    /// stderr go to `outputPath` (default /dev/null for both); `environment` entries are
    /// added to this process's environment.
    public init(_ executable: String, _ arguments: [String], inputPath: String = "/dev/null", outputPath: String = "/dev/null", environment: [String: String] = [:]) throws {
        var merged = ProcessInfo.processInfo.environment
        merged.merge(environment) { $1 }
        pid = try Tool.spawn([executable] + arguments, stdin: inputPath, output: .file(outputPath),
                             environment: merged.map { "\($0.key)=\($0.value)" }).pid
    }

    /// Whether it is still running (reaps it when it has ended).
    public var isRunning: Bool { poll() == nil }

    /// The raw wait status once it has ended.
    public var exitStatus: Int32? { poll() }

    /// Exit code when it exited normally, else nil.
    public var exitCode: Int32? {
        guard let status = poll(), status & 0x7f == 0 else { return nil }
        return (status >> 8) & 0xff
    }

    /// Sends `signal` without waiting (SIGHUP: read settings again).
    public func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; SIGKILL after that.
    @discardableResult
    public func stop(_ signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) -> Int32? {
        guard isRunning else { return exitStatus }
        kill(pid, signal)
        if let status = waitForExit(timeout: timeout) { return status }
        kill(pid, SIGKILL)
        return waitForExit(timeout: .seconds(5))
    }

    /// Waits up to `timeout` for the exit; returns the wait status, or nil if still running.
    public func waitForExit(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = poll() { return status }
            usleep(10_000)
        }
        return poll()
    }

    private func poll() -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if let status { return status }
        var raw: Int32 = 0
        let result = waitpid(pid, &raw, WNOHANG)
        if result == pid || (result < 0 && errno == ECHILD) {
            status = result == pid ? raw : -1
        }
        return status
    }

    deinit {
        if isRunning { stop(SIGKILL) }
    }
}
