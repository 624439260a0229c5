#if canImport(Glibc)
import Glibc
#endif

/// The receiving end of systemd's notification socket, for tests: a real unix datagram
/// socket bound at a path or an abstract name, read the way systemd reads it (one message
/// per datagram). Set `NOTIFY_SOCKET` to ``name`` in the process under test.
public final class NotifySocket: @unchecked Sendable {
    /// What `NOTIFY_SOCKET` should say: the path, or `@name` for an abstract socket.
    public let name: String
    private let fd: Int32

    /// Binds a socket at `path`, or at the abstract `name` when `path` starts with '@'.
    public init(_ path: String) throws {
        name = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: \(String(cString: strerror(errno)))") }
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw TestSupportError("bind \(path): \(reason)")
        }
    }

    deinit {
        close(fd)
        if !name.hasPrefix("@") { unlink(name) }
    }

    /// The next message, or nil when none comes within `timeout`. Waits by sleeping, not in
    /// poll(2): a test blocking one of the few cooperative threads would starve the very
    /// tasks (the watchdog's) it watches.
    public func receive(timeout: Duration) async -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 0) == 1 {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let count = recv(fd, &buffer, buffer.count, 0)
                guard count >= 0 else { return nil }
                return String(decoding: buffer.prefix(count), as: UTF8.self)
            }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Messages until one satisfies `done` (included) or `timeout` passes; all that came.
    public func receive(until done: (String) -> Bool, timeout: Duration) async -> [String] {
        let deadline = ContinuousClock.now + timeout
        var messages: [String] = []
        while ContinuousClock.now < deadline, let message = await receive(timeout: deadline - ContinuousClock.now) {
            messages.append(message)
            if done(message) { break }
        }
        return messages
    }
}
