import BynarProcess
import Glibc

/// Starts, stops and creates OSD daemons on this host: systemd and ceph-volume in
/// production, the dev-cluster script in tests.
public protocol OSDDaemonControl: Sendable {
    /// Stops the daemon of `id` and returns once it has exited.
    func stop(_ id: Int) throws
    /// Starts the existing daemon of `id`.
    func start(_ id: Int) throws
    /// Prepares a new OSD on `device` (nil: the control's own choice) and starts it; `id`
    /// re-uses a destroyed id.
    func create(_ id: Int?, device: String?) throws
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
/// the OSD id and `{device}` for the disk's device path. `create(nil, …)` runs the `create`
/// template, `create(id, …)` the `createWithID` one (e.g. `["ceph-volume", "lvm", "create",
/// "--osd-id", "{id}", "--data", "{device}"]`).
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

    public func stop(_ id: Int) throws { try run(stopCommand, id: id, device: nil) }
    public func start(_ id: Int) throws { try run(startCommand, id: id, device: nil) }
    public func create(_ id: Int?, device: String?) throws { try run(id == nil ? createCommand : createWithIDCommand, id: id, device: device) }

    /// The template with `{id}` and `{device}` filled in.
    public static func expand(_ template: [String], id: Int?, device: String?) -> [String] {
        template.map { word in
            var word = word
            if let id { word = word.replacing("{id}", with: String(id)) }
            if let device { word = word.replacing("{device}", with: device) }
            return word
        }
    }

    func run(_ template: [String], id: Int?, device: String?) throws {
        try Self.run(Self.expand(template, id: id, device: device), timeout: timeout)
    }

    /// Runs `command` (looked up on PATH) with a clean signal mask; throws unless it exits 0
    /// within `timeout`.
    public static func run(_ command: [String], timeout: Duration) throws {
        let run: Tool.Run
        do {
            run = try Tool.run(command, timeout: timeout, mergeStderr: true)
        } catch {
            let outcome: String = switch error.problem {
            case .cannotStart(let why, _): "cannot start: \(why)"
            case .timedOut(let after): "timed out after \(after)"
            case .failed(let why): why
            }
            throw DaemonCommandError(command: command, outcome: outcome, output: String(decoding: error.output.suffix(2000), as: UTF8.self))
        }
        let tail = String(decoding: run.output.suffix(2000), as: UTF8.self)
        if let signal = run.signal {
            throw DaemonCommandError(command: command, outcome: "killed by signal \(signal)", output: tail)
        }
        guard run.exitCode == 0 else {
            throw DaemonCommandError(command: command, outcome: "exit status \(run.exitCode ?? -1)", output: tail)
        }
    }
}
