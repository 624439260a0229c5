import Glibc
import Synchronization

/// librados, loaded when a Ceph backend is configured and not before: a host with only
/// plain data disks needs no Ceph libraries, and a disk-manager that never talks to Ceph
/// does not pay for libceph-common's start-up (about 1 MB of stack and heap it keeps).
/// The C API functions used here, with their C signatures from `rados/librados.h`.
struct LibRados: @unchecked Sendable {
    typealias Handle = UnsafeMutableRawPointer
    typealias Command = @convention(c) (
        Handle, UnsafeMutablePointer<UnsafePointer<CChar>?>, Int, UnsafePointer<CChar>?, Int,
        UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, UnsafeMutablePointer<Int>,
        UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, UnsafeMutablePointer<Int>
    ) -> Int32

    let create2: @convention(c) (UnsafeMutablePointer<Handle?>, UnsafePointer<CChar>, UnsafePointer<CChar>, UInt64) -> Int32
    let confReadFile: @convention(c) (Handle, UnsafePointer<CChar>?) -> Int32
    let confSet: @convention(c) (Handle, UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32
    let connect: @convention(c) (Handle) -> Int32
    let shutdown: @convention(c) (Handle) -> Void
    let monCommand: Command
    let mgrCommand: Command
    let bufferFree: @convention(c) (UnsafeMutablePointer<CChar>?) -> Void

    static let shared: Result<LibRados, RadosError> = load()

    private static func load() -> Result<LibRados, RadosError> {
        guard let library = dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown"
            return .failure(RadosError(operation: "load librados.so.2 (Debian: apt install librados2)", code: -ENOENT, statusText: reason))
        }
        func symbol<T>(_ name: String, as type: T.Type) throws(RadosError) -> T {
            guard let address = dlsym(library, name) else {
                throw RadosError(operation: "find \(name) in librados.so.2", code: -ENOENT, statusText: "")
            }
            return unsafeBitCast(address, to: type)
        }
        do throws(RadosError) {
            return .success(LibRados(
                create2: try symbol("rados_create2", as: (@convention(c) (UnsafeMutablePointer<Handle?>, UnsafePointer<CChar>, UnsafePointer<CChar>, UInt64) -> Int32).self),
                confReadFile: try symbol("rados_conf_read_file", as: (@convention(c) (Handle, UnsafePointer<CChar>?) -> Int32).self),
                confSet: try symbol("rados_conf_set", as: (@convention(c) (Handle, UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32).self),
                connect: try symbol("rados_connect", as: (@convention(c) (Handle) -> Int32).self),
                shutdown: try symbol("rados_shutdown", as: (@convention(c) (Handle) -> Void).self),
                monCommand: try symbol("rados_mon_command", as: Command.self),
                mgrCommand: try symbol("rados_mgr_command", as: Command.self),
                bufferFree: try symbol("rados_buffer_free", as: (@convention(c) (UnsafeMutablePointer<CChar>?) -> Void).self)
            ))
        } catch {
            return .failure(error)
        }
    }
}

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
        let raw: LibRados.Handle
    }

    private let handle: Mutex<Handle>
    private let rados: LibRados

    /// Connects as `clientName` (e.g. "client.admin") with the configuration file at
    /// `configPath`. Connecting, and every later mon, mgr or OSD operation, gives up after `timeout`.
    public init(configPath: String, clientName: String = "client.admin", timeout: Duration = .seconds(15)) throws {
        let rados = try LibRados.shared.get()
        var cluster: LibRados.Handle?
        var rc = rados.create2(&cluster, "ceph", clientName, 0)
        guard rc == 0, let cluster else { throw RadosError(operation: "create \(clientName)", code: rc, statusText: "") }
        func fail(_ operation: String, _ code: Int32) -> RadosError {
            rados.shutdown(cluster)
            return RadosError(operation: operation, code: code, statusText: "")
        }
        rc = rados.confReadFile(cluster, configPath)
        guard rc == 0 else { throw fail("read config \(configPath)", rc) }
        let seconds = String(max(1, timeout.components.seconds))
        for option in ["client_mount_timeout", "rados_osd_op_timeout", "rados_mon_op_timeout"] {
            rc = rados.confSet(cluster, option, seconds)
            guard rc == 0 else { throw fail("set \(option)", rc) }
        }
        rc = rados.connect(cluster)
        guard rc == 0 else { throw fail("connect with \(configPath)", rc) }
        self.rados = rados
        handle = Mutex(Handle(raw: cluster))
    }

    deinit {
        let rados = rados
        handle.withLock { rados.shutdown($0.raw) }
    }

    /// Sends one JSON command to the monitors. A negative status is returned, not thrown:
    /// some commands answer "no" that way (e.g. `osd ok-to-stop`). Throws only when the
    /// command cannot be sent.
    public func monCommand(_ json: String, input: [UInt8] = []) -> RadosReply {
        command(json, input: input, rados.monCommand)
    }

    /// Sends one JSON command to the active manager; as `monCommand`.
    public func mgrCommand(_ json: String, input: [UInt8] = []) -> RadosReply {
        command(json, input: input, rados.mgrCommand)
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

    private func command(_ json: String, input: [UInt8], _ call: LibRados.Command) -> RadosReply {
        handle.withLock { handle in
            var outbuf: UnsafeMutablePointer<CChar>?
            var outlen = 0
            var outs: UnsafeMutablePointer<CChar>?
            var outslen = 0
            let rc = json.withCString { cmd in
                var commands: [UnsafePointer<CChar>?] = [cmd]
                return commands.withUnsafeMutableBufferPointer { commands in
                    input.withUnsafeBytes { bytes in
                        call(handle.raw, commands.baseAddress!, 1, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count, &outbuf, &outlen, &outs, &outslen)
                    }
                }
            }
            defer {
                if let outbuf { rados.bufferFree(outbuf) }
                if let outs { rados.bufferFree(outs) }
            }
            let output = outbuf.map { Array(UnsafeRawBufferPointer(start: $0, count: outlen)) } ?? []
            let status = outs.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outslen), as: UTF8.self) } ?? ""
            return RadosReply(status: rc, output: output, statusText: status)
        }
    }
}
