import BynarDisks
import BynarConfig
import BynarProto
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// The detector's offline commands, for operators and scripts:
///
///     bynar-detector check [--json] [--config PATH]   one scan of this host, a verdict per disk
///     bynar-detector smart --blob FILE                judge a libatasmart `skdump --save` file
///     bynar-detector smart --smartctl-json FILE       judge `smartctl -j -a` output
///
/// `check` is a single look without history: SMART rules (no trend), filesystem findings,
/// no write probe. It changes nothing and publishes nothing.
public enum DetectorCommands {
    /// Every command with its usage and what it does, for `--help`.
    public static let usage: [(usage: String, summary: String)] = [
        ("check [--json] [--config PATH]", "one scan of this host, a verdict per disk"),
        ("smart --blob FILE", "judge a libatasmart `skdump --save` file"),
        ("smart --smartctl-json FILE", "judge `smartctl -j -a` output"),
    ]

    /// Runs the command in `arguments` (without the program name) and returns its exit
    /// status, or nil when `arguments` names no offline command (run the service).
    public static func run(_ arguments: [String]) -> Int32? {
        guard let command = arguments.first, !command.hasPrefix("-") else { return nil }
        let rest = Array(arguments.dropFirst())
        switch command {
        case "smart": return smart(rest)
        case "check": return check(rest)
        default:
            writeToStandardError("bynar-detector: unknown command \"\(command)\" (commands: check, smart; no command runs the service)")
            return 64
        }
    }

    static func smart(_ arguments: [String]) -> Int32 {
        guard arguments.count == 2, ["--blob", "--smartctl-json"].contains(arguments[0]) else {
            writeToStandardError("usage: bynar-detector smart --blob FILE | --smartctl-json FILE")
            return 64
        }
        do {
            let (reading, verdict) = arguments[0] == "--blob"
                ? try SmartCommand.judgeBlob(path: arguments[1])
                : try SmartCommand.judgeSmartctlJSON(path: arguments[1])
            print(SmartCommand.verdictJSON(reading, verdict))
            return 0
        } catch {
            writeToStandardError("bynar-detector smart: \(error)")
            return 1
        }
    }

    static func check(_ arguments: [String]) -> Int32 {
        var json = false
        var configPath: String?
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            switch argument {
            case "--json": json = true
            case "--config": configPath = rest.popFirst()
            default:
                writeToStandardError("usage: bynar-detector check [--json] [--config PATH]")
                return 64
            }
        }
        let config: BynarConfig
        do { config = try ConfigLoader.load(path: configPath).config } catch {
            writeToStandardError("bynar-detector: \(error)")
            return 78
        }
        let devices: [BlockDevice]
        do {
            let only = config.detector.watchOnly
            devices = try Inventory.scan(host: config.host ?? "localhost", excluded: config.detector.exclude)
                .filter { only.isEmpty || Inventory.exclusionReason(for: $0.identity, excluded: [], only: only) == nil }
        } catch {
            writeToStandardError("bynar-detector check: cannot scan block devices: \(error)")
            return 1
        }
        let mounts = MountTable.current()
        var results: [Bynar_V1_DiskHealth] = []
        for device in devices {
            var health = Bynar_V1_DiskHealth()
            health.disk = device.identity
            health.systemDisk = device.isSystemDisk
            health.excluded = device.excluded
            var reasons: [DiskHealthMachine.Reason] = []
            if DetectorEngine.hasSmart(device) {
                switch DetectorEngine.readSmart(device, smartctlPath: config.detector.smartctlPath) {
                case .success(let reading):
                    health.smart = reading.summary()
                    reasons += SmartRules.judge(current: reading, previous: nil).reasons.map(DetectorEngine.reason)
                case .failure(let error):
                    reasons.append(.init(rule: "smart.unreadable", severity: .healthy, detail: "\(error)"))
                }
            }
            for mount in DetectorEngine.mounts(of: device, in: mounts) {
                let found = FilesystemChecks.inspect(mount, wasReadWrite: false)
                reasons += found
                health.filesystems += found.map { DetectorEngine.finding(mount, $0) }
            }
            let worst = reasons.map(\.severity).max() ?? .healthy
            health.state = DetectorEngine.wire(worst)
            health.reasons = reasons.map { DetectorEngine.wire($0, atMs: 0) }
            results.append(health)
        }
        if json {
            var options = JSONEncodingOptions()
            options.preserveProtoFieldNames = true
            for health in results { print((try? health.jsonString(options: options)) ?? "{}") }
        } else {
            print(pad("DISK", 14) + pad("KEY", 34) + pad("STATE", 9) + "REASONS")
            for health in results {
                let flags = (health.systemDisk ? " [system]" : "") + (health.excluded ? " [excluded]" : "")
                let reasons = health.reasons.filter { $0.severity != .healthy }.map { "\($0.rule): \($0.detail)" }.joined(separator: "; ")
                print(pad(health.disk.devPath, 14) + pad(health.disk.key, 34) + pad(SmartCommand.stateName(health.state), 9) + (reasons.isEmpty ? "-" : reasons) + flags)
            }
        }
        return results.contains { $0.state == .failed || $0.state == .failing } ? 2 : 0
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
