import BynarConfig
import BynarProcess
#if canImport(Glibc)
import Glibc
#endif

/// Runs one application check, blocking (call it off the bus's threads): a TCP connect, a
/// plain-HTTP GET read to its status line and body, or a command through ``Tool`` (its own
/// process group, killed as a group at the timeout). Never throws: the outcome says what
/// happened, in words fit for a ticket.
enum AppProbe {
    /// Why a TCP connection could not be made.
    struct Unreachable: Error, Equatable {
        var why: String
    }

    struct Outcome: Equatable {
        var passed: Bool
        var detail: String
    }

    /// The check in words.
    static func describe(_ app: AppCheckConfig) -> String {
        if let http = app.http { return "http GET \(http) expecting \(app.expectStatus)" + (app.expectBody.map { " and \"\($0)\"" } ?? "") }
        if let tcp = app.tcp { return "tcp connect \(tcp)" }
        return "command \((app.command ?? []).joined(separator: " "))"
    }

    static func run(_ app: AppCheckConfig) -> Outcome {
        let timeout = Duration.seconds(app.timeoutSeconds)
        if let http = app.http, let url = AppCheckConfig.httpURL(http) {
            return httpGet(host: url.host, port: url.port, path: url.path, expectStatus: app.expectStatus, expectBody: app.expectBody, timeout: timeout)
        }
        if let tcp = app.tcp, let target = AppCheckConfig.hostPort(tcp) {
            switch connect(host: target.host, port: target.port, timeout: timeout) {
            case .success(let fd):
                close(fd)
                return Outcome(passed: true, detail: "tcp \(tcp) accepts connections")
            case .failure(let failure):
                return Outcome(passed: false, detail: "tcp \(tcp): \(failure.why)")
            }
        }
        if let command = app.command {
            do {
                let run = try Tool.run(command, timeout: timeout, mergeStderr: true, outputLimit: 64 << 10)
                let tail = run.text.split(separator: "\n").last.map { String($0.prefix(200)) } ?? ""
                if run.exitCode == 0 { return Outcome(passed: true, detail: "\(command[0]) exited 0") }
                let how = run.exitCode.map { "exited \($0)" } ?? "was killed by signal \(run.signal ?? 0)"
                return Outcome(passed: false, detail: "\(command[0]) \(how)" + (tail.isEmpty ? "" : ": \(tail)"))
            } catch {
                return Outcome(passed: false, detail: "\(command[0]): \(error)")
            }
        }
        return Outcome(passed: false, detail: "no check configured")
    }

    /// A connected TCP socket to `host:port` within `timeout`, or why not.
    static func connect(host: String, port: Int, timeout: Duration) -> Result<Int32, Unreachable> {
        let deadline = ContinuousClock.now + timeout
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let first = list else { return .failure(Unreachable(why: "cannot resolve \(host): \(String(cString: gai_strerror(resolved)))")) }
        defer { freeaddrinfo(list) }
        var why = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { why = String(cString: strerror(errno)); continue }
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return .success(fd) }
            guard errno == EINPROGRESS else { why = String(cString: strerror(errno)); close(fd); continue }
            guard wait(fd, events: Int16(POLLOUT), until: deadline) else { why = "no answer within \(timeout)"; close(fd); continue }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            if error == 0 { return .success(fd) }
            why = String(cString: strerror(error))
            close(fd)
        }
        return .failure(Unreachable(why: why))
    }

    /// Whether `fd` is ready for `events` before `deadline`.
    static func wait(_ fd: Int32, events: Int16, until deadline: ContinuousClock.Instant) -> Bool {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let milliseconds = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            let ready = poll(&entry, 1, milliseconds)
            if ready > 0 { return true }
            if ready < 0 && errno != EINTR { return false }
        }
    }

    /// `GET path` over plain HTTP/1.1 (`Connection: close`), reading at most 64 KiB of the
    /// answer: passes when the status is `expectStatus` and the body contains `expectBody`.
    static func httpGet(host: String, port: Int, path: String, expectStatus: Int, expectBody: String?, timeout: Duration) -> Outcome {
        let deadline = ContinuousClock.now + timeout
        let url = "http://\(host):\(port)\(path)"
        let fd: Int32
        switch connect(host: host, port: port, timeout: timeout) {
        case .success(let connected): fd = connected
        case .failure(let failure): return Outcome(passed: false, detail: "\(url): \(failure.why)")
        }
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUser-Agent: bynar-detector\r\nAccept: */*\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            guard wait(fd, events: Int16(POLLOUT), until: deadline) else { return Outcome(passed: false, detail: "\(url): no answer within \(timeout)") }
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno != EAGAIN && errno != EINTR { return Outcome(passed: false, detail: "\(url): \(String(cString: strerror(errno)))") }
            if n > 0 { sent += n }
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while answer.count < 65536 {
            guard wait(fd, events: Int16(POLLIN), until: deadline) else { return Outcome(passed: false, detail: "\(url): no whole answer within \(timeout)") }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { break }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                return Outcome(passed: false, detail: "\(url): \(String(cString: strerror(errno)))")
            }
            answer += buffer[0..<n]
        }
        return judge(answer, url: url, expectStatus: expectStatus, expectBody: expectBody)
    }

    /// The answer's status line and body against what is expected. Pure.
    static func judge(_ answer: [UInt8], url: String, expectStatus: Int, expectBody: String?) -> Outcome {
        let text = String(decoding: answer, as: UTF8.self)
        let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return Outcome(passed: false, detail: "\(url): not an HTTP answer (\"\(statusLine.prefix(80))\")")
        }
        guard status == expectStatus else { return Outcome(passed: false, detail: "\(url) answered \(status), expected \(expectStatus)") }
        if let expectBody {
            let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
            guard body.contains(expectBody) else { return Outcome(passed: false, detail: "\(url) answered \(status) without \"\(expectBody)\"") }
        }
        return Outcome(passed: true, detail: "\(url) answered \(status)")
    }
}
