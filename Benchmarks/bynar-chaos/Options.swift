import Foundation

/// What one chaos run does (`scripts/chaos --help`).
struct Options: Sendable {
    var hosts = 3
    var disks = 30
    /// Seconds between two kills (each kill is followed by a restart after `restartDelay`).
    var killEvery = 5.0
    var restartDelay = 1.0
    /// Seconds between two disk failures.
    var failEvery = 4.0
    /// Whether the broker is among the kill targets.
    var killBroker = true
    /// "production": the shipped mosquitto.conf (TLS, per-host ACL, autosave 60 s);
    /// "plain": the test broker with persistence saved every second.
    var broker = "production"
    /// The whole run stops here and reports what it has (unfinished repairs count as lost).
    var maxSeconds = 1800.0
    /// Chaos goes on this long after the last failure was injected.
    var chaosTail = 30.0
    var diskMB = 128
    var seed: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000)
    var keep = false
    var short = false
    /// Seconds to wait before the figures, to look at the machine (debugging the harness).
    var pauseAtEnd = 0.0
    /// When not empty, the only kill targets ("broker", "orchestrator", "disk-manager.h1", ...).
    var killOnly: [String] = []

    static let usage = """
        usage: bynar-chaos [--short] [--hosts H] [--disks N] [--kill-every S] [--fail-every S]
                           [--restart-delay S] [--no-broker-kills] [--broker production|plain]
                           [--chaos-tail S] [--max-seconds S] [--disk-mb MB] [--seed N] [--keep]
                           [--kill-only broker,orchestrator,ticketing,notifier,detector.h1,disk-manager.h1,...]
          --short   2 hosts, 6 disks, a kill every 3 s, a failure every 4 s, at most 240 s
                    (the variant the test suite runs); later options override it
        """

    static func parse(_ arguments: [String]) throws -> Options {
        var options = Options()
        var rest = arguments[...]
        func value(_ name: String) throws -> String {
            guard let next = rest.popFirst() else { throw OptionError("\(name) needs a value") }
            return next
        }
        func number(_ name: String) throws -> Double {
            let text = try value(name)
            guard let number = Double(text), number >= 0 else { throw OptionError("\(name): not a number: \(text)") }
            return number
        }
        while let argument = rest.popFirst() {
            switch argument {
            case "--short":
                options.short = true
                options.hosts = 2; options.disks = 6; options.killEvery = 3; options.failEvery = 4
                options.maxSeconds = 240; options.chaosTail = 15; options.diskMB = 64
            case "--hosts": options.hosts = Int(try number(argument))
            case "--disks": options.disks = Int(try number(argument))
            case "--kill-every": options.killEvery = try number(argument)
            case "--fail-every": options.failEvery = try number(argument)
            case "--restart-delay": options.restartDelay = try number(argument)
            case "--no-broker-kills": options.killBroker = false
            case "--broker":
                options.broker = try value(argument)
                guard ["production", "plain"].contains(options.broker) else { throw OptionError("--broker: production or plain") }
            case "--chaos-tail": options.chaosTail = try number(argument)
            case "--max-seconds": options.maxSeconds = try number(argument)
            case "--disk-mb": options.diskMB = Int(try number(argument))
            case "--seed": options.seed = UInt64(try number(argument))
            case "--keep": options.keep = true
            case "--pause-at-end": options.pauseAtEnd = try number(argument)
            case "--kill-only": options.killOnly = try value(argument).split(separator: ",").map(String.init)
            case "-h", "--help": throw OptionError("")
            default: throw OptionError("unknown option \(argument)")
            }
        }
        guard options.hosts >= 1, options.disks >= 1 else { throw OptionError("--hosts and --disks must be at least 1") }
        guard options.diskMB >= 32 else { throw OptionError("--disk-mb must be at least 32") }
        return options
    }
}

struct OptionError: Error { var message: String; init(_ message: String) { self.message = message } }

