import CRados
import Glibc
import Synchronization

/// A librados call that failed: which command, librados' negative errno and its status text.
public struct RadosError: Error, CustomStringConvertible {
    /// What was being done: "connect", or a command's `prefix`.
    public let operation: String
    /// The negative errno librados returned.
    public let code: Int32
    /// librados' status text (may be empty).
    public let statusText: String

    public init(operation: String, code: Int32, statusText: String) {
        self.operation = operation
        self.code = code
        self.statusText = statusText
    }

    public var description: String {
        let reason = String(cString: strerror(-code))
        return "rados \(operation): \(code) (\(reason))" + (statusText.isEmpty ? "" : ": \(statusText)")
    }
}

/// The reply to a mon or mgr command: librados' return value, the output buffer and the status text.
public struct RadosReply: Sendable {
    /// 0 or a negative errno.
    public let status: Int32
    public let output: [UInt8]
    public let statusText: String

    /// The output decoded as UTF-8.
    public var outputText: String { String(decoding: output, as: UTF8.self) }
}

/// One connection to a Ceph cluster through librados; the only place the project calls the C API.
///
/// Calls are serialised. The connection is shut down when the object is released.
public final class RadosCluster: Sendable {
    private struct Handle: @unchecked Sendable {
        let raw: rados_t
    }

    private let handle: Mutex<Handle>

    /// Connects as `clientName` (e.g. "client.admin") with the configuration file at
    /// `configPath`. Connecting, and every later mon, mgr or OSD operation, gives up after `timeout`.
    public init(configPath: String, clientName: String = "client.admin", timeout: Duration = .seconds(15)) throws {
        var cluster: rados_t?
        var rc = rados_create2(&cluster, "ceph", clientName, 0)
        guard rc == 0, let cluster else { throw RadosError(operation: "create \(clientName)", code: rc, statusText: "") }
        func fail(_ operation: String, _ code: Int32) -> RadosError {
            rados_shutdown(cluster)
            return RadosError(operation: operation, code: code, statusText: "")
        }
        rc = rados_conf_read_file(cluster, configPath)
        guard rc == 0 else { throw fail("read config \(configPath)", rc) }
        let seconds = String(max(1, timeout.components.seconds))
        for option in ["client_mount_timeout", "rados_osd_op_timeout", "rados_mon_op_timeout"] {
            rc = rados_conf_set(cluster, option, seconds)
            guard rc == 0 else { throw fail("set \(option)", rc) }
        }
        rc = rados_connect(cluster)
        guard rc == 0 else { throw fail("connect with \(configPath)", rc) }
        handle = Mutex(Handle(raw: cluster))
    }

    deinit {
        handle.withLock { rados_shutdown($0.raw) }
    }

    /// Sends one JSON command to the monitors. A negative status is returned, not thrown:
    /// some commands answer "no" that way (e.g. `osd ok-to-stop`). Throws only when the
    /// command cannot be sent.
    public func monCommand(_ json: String, input: [UInt8] = []) -> RadosReply {
        command(json, input: input) { cluster, cmd, inbuf, inlen, outbuf, outlen, outs, outslen in
            rados_mon_command(cluster, cmd, 1, inbuf, inlen, outbuf, outlen, outs, outslen)
        }
    }

    /// Sends one JSON command to the active manager; as `monCommand`.
    public func mgrCommand(_ json: String, input: [UInt8] = []) -> RadosReply {
        command(json, input: input) { cluster, cmd, inbuf, inlen, outbuf, outlen, outs, outslen in
            rados_mgr_command(cluster, cmd, 1, inbuf, inlen, outbuf, outlen, outs, outslen)
        }
    }

    /// Like `monCommand`, but a negative status throws a `RadosError` naming the command.
    @discardableResult
    public func checkedMonCommand(_ json: String, input: [UInt8] = []) throws -> RadosReply {
        let reply = monCommand(json, input: input)
        guard reply.status >= 0 else {
            throw RadosError(operation: Self.prefix(of: json), code: reply.status, statusText: reply.statusText)
        }
        return reply
    }

    /// Like `mgrCommand`, but a negative status throws a `RadosError` naming the command.
    @discardableResult
    public func checkedMgrCommand(_ json: String, input: [UInt8] = []) throws -> RadosReply {
        let reply = mgrCommand(json, input: input)
        guard reply.status >= 0 else {
            throw RadosError(operation: Self.prefix(of: json), code: reply.status, statusText: reply.statusText)
        }
        return reply
    }

    /// The `"prefix"` value of a JSON command, for error messages.
    static func prefix(of json: String) -> String {
        guard let key = json.firstRange(of: "\"prefix\"") else { return json }
        let rest = json[key.upperBound...].drop { $0 == " " || $0 == ":" }
        guard rest.first == "\"" else { return json }
        return String(rest.dropFirst().prefix { $0 != "\"" })
    }

    private typealias Call = (
        rados_t, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<CChar>?, Int,
        UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, UnsafeMutablePointer<Int>,
        UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, UnsafeMutablePointer<Int>
    ) -> Int32

    private func command(_ json: String, input: [UInt8], _ call: Call) -> RadosReply {
        handle.withLock { handle in
            var outbuf: UnsafeMutablePointer<CChar>?
            var outlen = 0
            var outs: UnsafeMutablePointer<CChar>?
            var outslen = 0
            let rc = json.withCString { cmd in
                var commands: [UnsafePointer<CChar>?] = [cmd]
                return commands.withUnsafeMutableBufferPointer { commands in
                    input.withUnsafeBytes { bytes in
                        call(handle.raw, commands.baseAddress!, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count, &outbuf, &outlen, &outs, &outslen)
                    }
                }
            }
            defer {
                if let outbuf { rados_buffer_free(outbuf) }
                if let outs { rados_buffer_free(outs) }
            }
            let output = outbuf.map { Array(UnsafeRawBufferPointer(start: $0, count: outlen)) } ?? []
            let status = outs.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outslen), as: UTF8.self) } ?? ""
            return RadosReply(status: rc, output: output, statusText: status)
        }
    }
}
