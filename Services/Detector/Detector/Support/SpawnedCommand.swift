import Glibc

/// A spawned child (smartctl, e2fsck, xfs_repair) whose standard output we read, with a
/// clean signal mask and a minimal environment; reaped exactly once. Errors name the
/// device (`name`) and the tool (`operation`).
final class SpawnedCommand {
    let pid: pid_t
    let output: Int32
    let name: String
    let operation: String
    private var reaped = false

    init(executable: String, arguments: [String], name: String, operation: String) throws(SmartError) {
        self.name = name
        self.operation = operation
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw SmartError.system(path: name, operation: "pipe", errno: errno)
        }
        // Neither end may leak into other children (Glibc's module does not export pipe2);
        // the child gets the write end as its stdout through dup2, which clears the flag.
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)

        // The child starts with no blocked signals and default SIGPIPE, whatever ours are.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let environment: [String] = ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }

        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            throw SmartError(path: name, operation: "spawn \(executable)", kind: .system(errno: rc),
                             reason: SmartError.errnoText(rc))
        }
        self.pid = pid
        self.output = fds[0]
    }

    deinit {
        close(output)
        if !reaped {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// Standard output to end of file, or throws `.timedOut` at `deadline`.
    func readAll(until deadline: ContinuousClock.Instant, limit: Int = 16 << 20) throws(SmartError) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let remaining = deadline - .now
            guard remaining > .zero else { throw timedOut() }
            var descriptor = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Self.milliseconds(remaining))
            if ready < 0 {
                if errno == EINTR { continue }
                throw SmartError.system(path: name, operation: "poll", errno: errno)
            }
            if ready == 0 { continue }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(output, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw SmartError.system(path: name, operation: "read", errno: errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<n])
            guard bytes.count <= limit else {
                throw SmartError(path: name, operation: operation, kind: .malformed, reason: "output larger than \(limit) bytes")
            }
        }
    }

    /// The raw wait status once the child exits; kills it and throws `.timedOut` at `deadline`.
    func wait(until deadline: ContinuousClock.Instant) throws(SmartError) -> Int32 {
        var status: Int32 = 0
        while true {
            let rc = waitpid(pid, &status, WNOHANG)
            if rc == pid {
                reaped = true
                return status
            }
            if rc < 0 && errno != EINTR {
                reaped = true
                throw SmartError.system(path: name, operation: "waitpid", errno: errno)
            }
            guard ContinuousClock.now < deadline else {
                kill()
                throw timedOut()
            }
            usleep(2_000)
        }
    }

    /// Kills and reaps the child now.
    func kill() {
        guard !reaped else { return }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
    }

    private func timedOut() -> SmartError {
        SmartError(path: name, operation: operation, kind: .timedOut, reason: "did not finish in time; killed")
    }

    private static func milliseconds(_ duration: Duration) -> Int32 {
        let (seconds, attoseconds) = duration.components
        let ms = seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1
        return Int32(clamping: max(1, ms))
    }
}
