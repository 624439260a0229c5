import Glibc

/// Starts, stops and creates OSD daemons on this host: systemd and ceph-volume in
/// production, the dev-cluster script in tests.
public protocol OSDDaemonControl: Sendable {
    /// Stops the daemon of `id` and returns once it has exited.
    func stop(_ id: Int) throws
    /// Starts the existing daemon of `id`.
    func start(_ id: Int) throws
    /// Prepares a new OSD on a prepared device and starts it; `id` re-uses a destroyed id.
    func create(_ id: Int?) throws
}

/// A daemon command that did not finish well.
public struct DaemonCommandError: Error, CustomStringConvertible {
    public let command: [String]
    /// "exit status N", "killed by signal N", "timed out after …" or "cannot start: …".
    public let outcome: String
    /// The last part of what the command wrote to stdout and stderr.
    public let output: String

    public var description: String {
        "\(command.joined(separator: " ")): \(outcome)" + (output.isEmpty ? "" : "\n\(output)")
    }
}

/// `OSDDaemonControl` by running configured command templates, in which `{id}` stands for
/// the OSD id. `create(nil)` runs the `create` template, `create(id)` the `createWithID` one
/// (e.g. `["ceph-volume", "lvm", "create", "--osd-id", "{id}", "--data", "/dev/sdX"]`): the
/// device is the caller's to fill in, so the create templates have no defaults.
public struct CommandDaemonControl: OSDDaemonControl {
    public var stopCommand: [String]
    public var startCommand: [String]
    public var createCommand: [String]
    public var createWithIDCommand: [String]
    /// How long one command may run before it is killed.
    public var timeout: Duration

    public init(
        stop: [String] = ["systemctl", "stop", "ceph-osd@{id}"],
        start: [String] = ["systemctl", "start", "ceph-osd@{id}"],
        create: [String],
        createWithID: [String],
        timeout: Duration = .seconds(120)
    ) {
        self.stopCommand = stop
        self.startCommand = start
        self.createCommand = create
        self.createWithIDCommand = createWithID
        self.timeout = timeout
    }

    public func stop(_ id: Int) throws { try run(stopCommand, id: id) }
    public func start(_ id: Int) throws { try run(startCommand, id: id) }
    public func create(_ id: Int?) throws { try run(id == nil ? createCommand : createWithIDCommand, id: id) }

    func run(_ template: [String], id: Int?) throws {
        let command = template.map { word in id.map { word.replacing("{id}", with: String($0)) } ?? word }
        try Self.run(command, timeout: timeout)
    }

    /// Runs `command` (looked up on PATH) with a clean signal mask; throws unless it exits 0
    /// within `timeout`.
    public static func run(_ command: [String], timeout: Duration) throws {
        guard let executable = command.first else { throw DaemonCommandError(command: command, outcome: "empty command", output: "") }
        var template = Array("/tmp/bynar-daemon-cmd-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw DaemonCommandError(command: command, outcome: "cannot create output file: \(String(cString: strerror(errno)))", output: "") }
        let outputPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        close(fd)
        defer { unlink(outputPath) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Swift's concurrency threads block SIGTERM and friends; the child must not inherit that.
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawnp(&child, executable, &actions, &attributes, argv, environ)
        guard rc == 0 else {
            throw DaemonCommandError(command: command, outcome: "cannot start: \(String(cString: strerror(rc)))", output: "")
        }
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let result = waitpid(child, &status, WNOHANG)
            if result == child { break }
            if result < 0 && errno != EINTR {
                throw DaemonCommandError(command: command, outcome: "waitpid: \(String(cString: strerror(errno)))", output: tail(of: outputPath))
            }
            if ContinuousClock.now >= deadline {
                kill(child, SIGKILL)
                _ = waitpid(child, &status, 0)
                throw DaemonCommandError(command: command, outcome: "timed out after \(timeout)", output: tail(of: outputPath))
            }
            usleep(20_000)
        }
        if status & 0x7f == 0 {
            let code = (status >> 8) & 0xff
            guard code == 0 else { throw DaemonCommandError(command: command, outcome: "exit status \(code)", output: tail(of: outputPath)) }
        } else {
            throw DaemonCommandError(command: command, outcome: "killed by signal \(status & 0x7f)", output: tail(of: outputPath))
        }
    }

    private static func tail(of path: String, limit: Int = 2000) -> String {
        guard let file = fopen(path, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            if bytes.count > 4 * limit { bytes.removeFirst(bytes.count - limit) }
        }
        return String(decoding: bytes.suffix(limit), as: UTF8.self)
    }
}
