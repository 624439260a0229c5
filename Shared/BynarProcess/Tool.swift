#if canImport(Glibc)
public import Glibc
#endif

/// Runs external tools (smartctl, e2fsck, systemctl, ceph tools) the one way Bynar does:
/// posix_spawn with an empty signal mask and default signal dispositions (Swift's
/// concurrency threads block SIGTERM, SIGINT and SIGHUP, and a child would inherit that),
/// standard input from /dev/null, output through a close-on-exec pipe or into a file, its
/// own process group, and a hard deadline after which the whole group is killed.
public enum Tool {
    /// Where a spawned tool's standard output (and, with `mergeStderr`, its standard error) goes.
    public enum Output: Sendable {
        /// A pipe the caller reads (returned by ``spawn(_:stdin:output:mergeStderr:environment:)``).
        case pipe
        /// Appended to this file.
        case file(String)
        case discard
    }

    /// Starts `command` (its first element is a path, or a name looked up on PATH) and
    /// returns its pid and, for `.pipe`, the read end of its output.
    public static func spawn(_ command: [String], stdin: String = "/dev/null", output: Output = .discard, mergeStderr: Bool = true, environment: [String]? = nil) throws(ToolError) -> (pid: pid_t, output: Int32?) {
        guard let executable = command.first else { throw ToolError(command: command, problem: .cannotStart("empty command", errno: EINVAL)) }
        var pipeEnds: [Int32] = [-1, -1]
        if case .pipe = output {
            guard pipe(&pipeEnds) == 0 else { throw ToolError(command: command, problem: .cannotStart("pipe: \(describe(errno))", errno: errno)) }
            // Neither end may leak into other children; dup2 clears the flag on the child's copy.
            _ = fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
        switch output {
        case .pipe: posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        case .file(let path): posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        case .discard: posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if mergeStderr {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        // Nothing of the service's but stdin/stdout/stderr: not its broker sockets, not its
        // SQLite files (whatever lacks close-on-exec).
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        // Its own process group (pgid = its pid), so a timeout kills everything it started
        // (ceph-volume's and mkfs's children too), not only the direct child.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
        defer {
            argv.forEach { free($0) }
            envp?.forEach { free($0) }
        }
        var pid: pid_t = 0
        let inherited: [UnsafeMutablePointer<CChar>?] = envp == nil ? cleanEnvironment().map { strdup($0) } + [nil] : []
        defer { inherited.forEach { free($0) } }
        let rc = envp.map { envp in posix_spawnp(&pid, executable, &actions, &attributes, argv, envp) }
            ?? posix_spawnp(&pid, executable, &actions, &attributes, argv, inherited)
        if pipeEnds[1] >= 0 { close(pipeEnds[1]) }
        guard rc == 0 else {
            if pipeEnds[0] >= 0 { close(pipeEnds[0]) }
            throw ToolError(command: command, problem: .cannotStart(describe(rc), errno: rc))
        }
        ToolGroups.record(pid)
        return (pid, pipeEnds[0] >= 0 ? pipeEnds[0] : nil)
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later; Swift's Glibc
    /// module does not export it), looked up once.
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    /// The service's environment without Bynar's own settings (`BYNAR_*`, which may carry
    /// the broker password or a JIRA token): what a tool gets unless told otherwise.
    public static func cleanEnvironment() -> [String] {
        var result: [String] = []
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if !text.hasPrefix("BYNAR_") { result.append(text) }
            pointer += 1
        }
        return result
    }

    /// What a finished tool did.
    public struct Run: Sendable, Equatable {
        /// Raw wait status.
        public var status: Int32
        /// Standard output (and standard error when merged).
        public var output: [UInt8]
        /// The exit code when the tool exited normally.
        public var exitCode: Int32? { status & 0x7f == 0 ? (status >> 8) & 0xff : nil }
        /// The signal that ended it, when one did.
        public var signal: Int32? { status & 0x7f == 0 ? nil : status & 0x7f }
        /// Output as text.
        public var text: String { String(decoding: output, as: UTF8.self) }
    }

    /// Runs `command` to its end, collecting its output, and kills it at `timeout`.
    /// A non-zero exit is not an error here: the caller reads ``Run/exitCode``.
    public static func run(_ command: [String], timeout: Duration, mergeStderr: Bool = false, environment: [String]? = nil, outputLimit: Int = 16 << 20) throws(ToolError) -> Run {
        let (pid, fd) = try spawn(command, output: .pipe, mergeStderr: mergeStderr, environment: environment)
        guard let fd else { throw ToolError(command: command, problem: .cannotStart("no output pipe", errno: EBADF)) }
        defer { close(fd) }
        let deadline = ContinuousClock.now + timeout
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        reading: while true {
            let remaining = deadline - .now
            guard remaining > .zero else {
                reap(pid, kill: true)
                throw ToolError(command: command, problem: .timedOut(timeout), output: output)
            }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, milliseconds(remaining))
            if ready < 0 && errno != EINTR {
                reap(pid, kill: true)
                throw ToolError(command: command, problem: .failed("poll: \(describe(errno))"), output: output)
            }
            if ready <= 0 { continue }
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                reap(pid, kill: true)
                throw ToolError(command: command, problem: .failed("read: \(describe(errno))"), output: output)
            }
            if count == 0 { break reading }
            output += chunk[0..<count]
            if output.count > outputLimit {
                reap(pid, kill: true)
                throw ToolError(command: command, problem: .failed("output larger than \(outputLimit) bytes"), output: Array(output.suffix(2000)))
            }
        }
        // Output closed: the tool is ending; wait for it, still bounded by the deadline.
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                ToolGroups.forget(pid)
                return Run(status: status, output: output)
            }
            if result < 0 && errno != EINTR { throw ToolError(command: command, problem: .failed("waitpid: \(describe(errno))"), output: output) }
            if ContinuousClock.now >= deadline {
                reap(pid, kill: true)
                throw ToolError(command: command, problem: .timedOut(timeout), output: output)
            }
            usleep(2_000)
        }
    }

    /// Kills (when asked: the tool's whole process group) and reaps `pid`.
    public static func reap(_ pid: pid_t, kill killIt: Bool) {
        if killIt {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        ToolGroups.forget(pid)
    }

    static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }

    static func milliseconds(_ duration: Duration) -> Int32 {
        let (seconds, attoseconds) = duration.components
        return Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
    }
}

/// A tool that could not be run to its end.
public struct ToolError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        case cannotStart(String, errno: Int32)
        case timedOut(Duration)
        case failed(String)
    }
    public var command: [String]
    public var problem: Problem
    /// What it printed before it failed (the end of it).
    public var output: [UInt8] = []

    public init(command: [String], problem: Problem, output: [UInt8] = []) {
        self.command = command
        self.problem = problem
        self.output = output
    }

    public var description: String {
        let name = command.joined(separator: " ")
        switch problem {
        case .cannotStart(let why, _): return "cannot start \(name): \(why)"
        case .timedOut(let after): return "\(name) did not finish within \(after); killed"
        case .failed(let why): return "\(name): \(why)"
        }
    }
}
