/// The detector's section of the host config (`"detector": {...}`).
public struct DetectorConfig: Codable, Sendable, Equatable {
    /// Full check of every disk (filesystems, write probe) this often. Kernel I/O errors and
    /// disks coming or going trigger a check at once, whatever this says.
    public var checkIntervalSeconds = 60
    /// SMART is sampled at most this often per disk (it wakes sleeping drives and costs a
    /// few hundred ms); a kernel error forces a sample.
    public var smartIntervalSeconds = 600
    /// Write, read back and fsync 4 KiB with O_DIRECT on each mounted filesystem per check.
    public var probe = true
    public var probeTimeoutSeconds = 10
    /// Disks never to judge or repair: shell patterns matched against the device path, key,
    /// serial, WWN or by-path (`/dev/sda`, `serial-ZA1*`, ...).
    public var exclude: [String] = []
    public var smartctlPath = "/usr/sbin/smartctl"
    public var kmsgPath = "/dev/kmsg"
    /// A disk no cluster uses (nothing mounted, no holders, exclusive open works) gets a
    /// read-only `e2fsck -n` / `xfs_repair -n` this often; 0 turns it off.
    public var fsckIntervalSeconds = 86_400
    public var fsckTimeoutSeconds = 600
    /// ...and only after every check for this long found it unused.
    public var fsckQuietSeconds = 3600
    /// SMART samples kept per disk for trends.
    public var smartSamplesKept = 100

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "detector." + field, problem: text)) }
        if checkIntervalSeconds < 1 { problem("check_interval_seconds", "must be at least 1, got \(checkIntervalSeconds)") }
        if smartIntervalSeconds < 1 { problem("smart_interval_seconds", "must be at least 1, got \(smartIntervalSeconds)") }
        if probeTimeoutSeconds < 1 { problem("probe_timeout_seconds", "must be at least 1, got \(probeTimeoutSeconds)") }
        if fsckIntervalSeconds < 0 { problem("fsck_interval_seconds", "must be 0 (off) or more, got \(fsckIntervalSeconds)") }
        if fsckQuietSeconds < 0 { problem("fsck_quiet_seconds", "must be 0 or more, got \(fsckQuietSeconds)") }
        if fsckTimeoutSeconds < 1 { problem("fsck_timeout_seconds", "must be at least 1, got \(fsckTimeoutSeconds)") }
        if smartSamplesKept < 2 { problem("smart_samples_kept", "must be at least 2 (trends need two), got \(smartSamplesKept)") }
        if exclude.contains(where: \.isEmpty) { problem("exclude", "patterns must not be empty") }
        return problems
    }
}
