/// The disk-manager's section of the host config (`"disk_manager": {...}`).
public struct DiskManagerConfig: Codable, Sendable, Equatable {
    /// Public keys allowed to sign commands: lines `KEY_ID ed25519 BASE64`. Without it every
    /// command is refused (no key is trusted by default).
    public var trustedKeysFile: String?
    /// At most this many of this host's disks out (removed, not yet added back) at once.
    public var maxDisksOut = 1
    /// Disks never touched: shell patterns on device path, key, serial, WWN, by-path or by-id.
    public var exclude: [String] = []
    /// Longest signed-command lifetime accepted.
    public var maxCommandLifetimeSeconds = 600

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager." + field, problem: text)) }
        if maxDisksOut < 0 { problem("max_disks_out", "must be 0 or more, got \(maxDisksOut)") }
        if maxCommandLifetimeSeconds < 1 { problem("max_command_lifetime_seconds", "must be at least 1, got \(maxCommandLifetimeSeconds)") }
        if let file = trustedKeysFile, let reason = unreadable(file) { problem("trusted_keys_file", reason) }
        if exclude.contains(where: \.isEmpty) { problem("exclude", "patterns must not be empty") }
        return problems
    }
}
