import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A real mosquitto broker on a free loopback port, for tests. Stopped by pid on `stop()`
/// and on deinit, so a failing test leaves nothing running.
public final class TestBroker: @unchecked Sendable {
    public let port: Int
    /// Scratch directory: config, log, persistence.
    public let directory: String
    private let configPath: String
    private let lock = NSLock()
    private var process: ChildProcess?

    /// Whether a mosquitto binary is installed (tests skip with a message when not).
    public static var available: Bool { FileManager.default.isExecutableFile(atPath: mosquittoPath) }
    public static let mosquittoPath = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/sbin/mosquitto"

    /// Starts a broker. `extraConfig` lines are appended to the listener config (ACL and
    /// password files, limits); `persistence` keeps sessions and queues across restarts.
    public convenience init(extraConfig: String = "", persistence: Bool = false) throws {
        try self.init { port, directory in
            TestBroker.plainConfig(port: port, directory: directory, extraConfig: extraConfig, persistence: persistence)
        }
    }

    /// Starts a broker whose whole configuration `config(port, directory)` writes, for a
    /// free loopback port and the scratch directory (``ProductionBroker``).
    public init(config: (Int, String) throws -> String) throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-broker")
        port = try freeLoopbackPort()
        configPath = directory + "/mosquitto.conf"
        try config(port, directory).write(toFile: configPath, atomically: true, encoding: .utf8)
        try start()
    }

    static func plainConfig(port: Int, directory: String, extraConfig: String, persistence: Bool) -> String {
        var config = """
        # Test broker: stays root (no privilege drop) so it can read the scratch files.
        user root
        # As in deploy/mosquitto: without it Nagle adds ~40 ms to every reply.
        set_tcp_nodelay true
        listener \(port) 127.0.0.1
        log_dest file \(directory)/mosquitto.log
        log_type error
        log_type warning
        log_type notice
        log_type information

        """
        if persistence {
            config += "persistence true\npersistence_location \(directory)/\nautosave_interval 1\n"
        }
        config += extraConfig.isEmpty ? "allow_anonymous true\n" : extraConfig + "\n"
        return config
    }

    /// Starts (or restarts) the broker process on the same port and waits until it accepts
    /// connections.
    public func start() throws {
        let process = try ChildProcess(TestBroker.mosquittoPath, ["-c", configPath], outputPath: directory + "/mosquitto.out")
        lock.withLock { self.process = process }
        // Recorded so scripts/test can kill a broker whose test process died without cleaning up.
        try? "\(process.pid)\n".write(toFile: directory + "/mosquitto.pid", atomically: true, encoding: .utf8)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if canConnect(port: port) { return }
            if !process.isRunning {
                throw TestSupportError("mosquitto exited at start; log:\n\(log)")
            }
            usleep(20_000)
        }
        throw TestSupportError("mosquitto did not listen on \(port) within 10 s; log:\n\(log)")
    }

    /// SIGTERM (the broker saves persistence) and wait for it to exit.
    public func stop() {
        guard let process = lock.withLock({ () -> ChildProcess? in defer { self.process = nil }; return self.process }) else { return }
        process.stop(SIGTERM)
    }


    /// Sends `signal` to the broker process (SIGSTOP / SIGCONT: a broker that hangs).
    public func signal(_ signal: Int32) {
        if let pid = lock.withLock({ process?.pid }) { kill(pid, signal) }
    }

    /// The broker's log so far.
    public var log: String { (try? String(contentsOfFile: directory + "/mosquitto.log", encoding: .utf8)) ?? "(no log)" }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A failure in test set-up, with what went wrong.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A fresh directory under /tmp.
public func makeTemporaryDirectory(prefix: String) throws -> String {
    var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
    guard let result = mkdtemp(&template) else { throw TestSupportError("mkdtemp failed: \(String(cString: strerror(errno)))") }
    return String(cString: result)
}

/// Ports `freeLoopbackPort()` handed out in this process: never twice.
private let handedOutPorts = Mutex<Set<Int>>([])

/// A TCP port on 127.0.0.1 that was free a moment ago, never the same twice in one test run.
///
/// Chosen below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), so that no
/// outgoing connection can take it as its local port between this check and the server's
/// bind: a port from `bind(0)` is an ephemeral one, and on a busy CI run one of the three
/// etcd members it was chosen for found it taken (a cluster that never became healthy).
public func freeLoopbackPort() throws -> Int {
    let ephemeralLow = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        .flatMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } } ?? 32768
    let range = 10_000..<max(10_000, ephemeralLow)
    if range.count >= 1_000 {
        for _ in 0..<200 {
            let candidate = Int.random(in: range)
            let fresh = handedOutPorts.withLock { $0.insert(candidate).inserted }
            if fresh, try bindLoopback(port: candidate) != nil { return candidate }
        }
    }
    // No room below the ephemeral range on this machine: any free port.
    guard let port = try bindLoopback(port: 0) else { throw TestSupportError("cannot bind a loopback port") }
    handedOutPorts.withLock { _ = $0.insert(port) }
    return port
}

/// Binds a TCP socket on 127.0.0.1 to `port` (0: any) and closes it: the port it got, or nil
/// when that port is taken (also by a connection in TIME_WAIT: no SO_REUSEADDR here).
private func bindLoopback(port: Int) throws -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket failed: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    return bound ? Int(UInt16(bigEndian: address.sin_port)) : nil
}

func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}
