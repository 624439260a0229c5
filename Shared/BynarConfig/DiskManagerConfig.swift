/// The disk-manager's section of the host config (`"disk_manager": {...}`).
public struct DiskManagerConfig: Codable, Sendable, Equatable {
    /// Public keys allowed to sign commands: lines `KEY_ID ed25519 BASE64`. Without it every
    /// command is refused (no key is trusted by default).
    public var trustedKeysFile: String?
    /// At most this many of this host's disks out (removed, not yet added back) at once.
    public var maxDisksOut = 1
    /// Disks never touched: shell patterns on device path, key, serial, WWN, by-path or by-id.
    public var exclude: [String] = []
    /// When not empty, the only disks this disk-manager touches: shell patterns as for
    /// `exclude` (`/dev/sd[b-m]`, `by-path` slots). Every other disk is listed as excluded.
    public var manageOnly: [String] = []
    /// Longest signed-command lifetime accepted.
    public var maxCommandLifetimeSeconds = 600
    /// How far a sender's clock and this host's may disagree: commands and request deadlines
    /// are honoured this long past their time by this host's clock. A refusal says the skew
    /// it measured. At most 600 (nonces are remembered an hour past expiry).
    public var allowedClockSkewSeconds = 30
    /// Ceph OSDs on this host; the Ceph backend is on when this section is present.
    public var ceph: CephBackendConfig?
    /// Plain data disks (one filesystem per disk, mounted by UUID); on when present.
    public var filesystem: FilesystemBackendConfig?
    /// Gluster bricks, one per disk (mounted like the filesystem backend's); on when present.
    public var gluster: GlusterBackendConfig?
    /// Disks that are vdevs of this host's imported ZFS pools; on when present.
    public var zfs: ZFSBackendConfig?
    /// Backend a Deploy on a blank disk uses: "ceph" or "filesystem"; default the only one
    /// configured, or "ceph" when both are.
    public var deployBackend: String?

    public init() {}

    /// The backend Deploy uses, or nil when none is configured.
    public var effectiveDeployBackend: String? {
        if let deployBackend { return deployBackend }
        if ceph != nil { return "ceph" }
        if filesystem != nil { return "filesystem" }
        return nil
    }

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager." + field, problem: text)) }
        if maxDisksOut < 0 { problem("max_disks_out", "must be 0 or more, got \(maxDisksOut)") }
        if !(0...600).contains(allowedClockSkewSeconds) { problem("allowed_clock_skew_seconds", "must be 0 to 600, got \(allowedClockSkewSeconds)") }
        if maxCommandLifetimeSeconds < 1 { problem("max_command_lifetime_seconds", "must be at least 1, got \(maxCommandLifetimeSeconds)") }
        if let file = trustedKeysFile, let reason = unreadable(file) { problem("trusted_keys_file", reason) }
        if exclude.contains(where: \.isEmpty) { problem("exclude", "patterns must not be empty") }
        if manageOnly.contains(where: \.isEmpty) { problem("manage_only", "patterns must not be empty") }
        if let deployBackend {
            if !["ceph", "filesystem"].contains(deployBackend) {
                problem("deploy_backend", "must be \"ceph\" or \"filesystem\", got \"\(deployBackend)\"")
            } else if (deployBackend == "ceph" && ceph == nil) || (deployBackend == "filesystem" && filesystem == nil) {
                problem("deploy_backend", "names \"\(deployBackend)\" but there is no disk_manager.\(deployBackend) section")
            }
        }
        if let ceph { problems += ceph.validate() }
        if let filesystem { problems += filesystem.validate() }
        if let gluster { problems += gluster.validate() }
        if let gluster, let filesystem, [(gluster.mountRoot, filesystem.mountRoot), (filesystem.mountRoot, gluster.mountRoot)].contains(where: { $0 == $1 || $0.hasPrefix($1 + "/") }) {
            problem("gluster.mount_root", "must not be or lie under disk_manager.filesystem.mount_root (or it under this), got \"\(gluster.mountRoot)\" and \"\(filesystem.mountRoot)\": a disk there would be both backends'")
        }
        if let zfs { problems += zfs.validate() }
        return problems
    }
}

/// How the disk-manager reaches Ceph and runs OSD daemons (`"disk_manager": {"ceph": {...}}`).
///
/// Command templates are argument lists; `{id}` stands for the OSD id and `{device}` for the
/// disk's device path (`/dev/sdX`). Production uses systemd and ceph-volume (the defaults);
/// tests use `scripts/ceph-dev-cluster`.
public struct CephBackendConfig: Codable, Sendable, Equatable {
    public var configFile = "/etc/ceph/ceph.conf"
    /// cephx identity for mon/mgr commands (its keyring comes from the config file).
    public var clientName = "client.admin"
    /// The host name Ceph records for this host's OSDs (`ceph osd metadata` "hostname");
    /// default the machine's host name.
    public var osdHostname: String?
    public var stopCommand = ["systemctl", "stop", "ceph-osd@{id}"]
    public var startCommand = ["systemctl", "start", "ceph-osd@{id}"]
    /// Recreates a destroyed id on a new disk, keeping the id and CRUSH position.
    public var createWithIdCommand = ["ceph-volume", "lvm", "create", "--osd-id", "{id}", "--data", "{device}"]
    /// A brand-new OSD on a blank disk.
    public var createCommand = ["ceph-volume", "lvm", "create", "--data", "{device}"]
    /// Longest a daemon command may run.
    public var commandTimeoutSeconds = 600
    /// Remove: after marking out, the wait for safe-to-destroy (data moved away) gives up
    /// when no data has moved off the OSD for this long (a real drain takes hours: it is
    /// followed, not cut off).
    public var safeToDestroyStallSeconds = 1800
    /// Remove: longest wait for safe-to-destroy in all, however the drain moves; 0: no limit.
    public var safeToDestroyTimeoutSeconds = 0
    /// Add/Deploy: longest wait for the new OSD to come up and in.
    public var upTimeoutSeconds = 300
    /// How often the waits poll the cluster.
    public var pollIntervalMs = 1000
    /// Zero the first and last MiB of a removed OSD's disk after destroy (old labels must
    /// not confuse the next deploy on it).
    public var wipeAfterDestroy = true

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager.ceph." + field, problem: text)) }
        if let reason = unreadable(configFile) { problem("config_file", reason) }
        if clientName.isEmpty { problem("client_name", "must not be empty") }
        for (field, template, needs) in [
            ("stop_command", stopCommand, ["{id}"]), ("start_command", startCommand, ["{id}"]),
            ("create_with_id_command", createWithIdCommand, ["{id}", "{device}"]), ("create_command", createCommand, ["{device}"]),
        ] {
            if template.isEmpty { problem(field, "must name a program") }
            for placeholder in needs where !template.contains(where: { $0.contains(placeholder) }) {
                problem(field, "must contain \(placeholder)")
            }
        }
        if commandTimeoutSeconds < 1 { problem("command_timeout_seconds", "must be at least 1, got \(commandTimeoutSeconds)") }
        if safeToDestroyTimeoutSeconds < 0 { problem("safe_to_destroy_timeout_seconds", "must be 0 (no limit) or more, got \(safeToDestroyTimeoutSeconds)") }
        if safeToDestroyStallSeconds < 1 { problem("safe_to_destroy_stall_seconds", "must be at least 1, got \(safeToDestroyStallSeconds)") }
        if upTimeoutSeconds < 1 { problem("up_timeout_seconds", "must be at least 1, got \(upTimeoutSeconds)") }
        if pollIntervalMs < 10 { problem("poll_interval_ms", "must be at least 10, got \(pollIntervalMs)") }
        return problems
    }
}

/// Plain data disks (`"disk_manager": {"filesystem": {...}}`): each managed disk carries one
/// filesystem on the whole disk, mounted by UUID under `mount_root`, with a line in fstab.
public struct FilesystemBackendConfig: Codable, Sendable, Equatable {
    /// Managed disks are mounted at `<mount_root>/<name>`; a disk mounted elsewhere is not
    /// this backend's.
    public var mountRoot = "/srv/bynar"
    /// Filesystem made on new disks: "xfs" or "ext4".
    public var filesystem = "xfs"
    public var mkfsOptions: [String] = []
    public var mountOptions = "defaults,noatime,nofail"
    /// The fstab kept consistent with what is mounted (lines for managed mountpoints only;
    /// every other line is left exactly as it is).
    public var fstab = "/etc/fstab"
    /// Longest mkfs / mount / umount may run.
    public var commandTimeoutSeconds = 300

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager.filesystem." + field, problem: text)) }
        if !mountRoot.hasPrefix("/") || mountRoot == "/" { problem("mount_root", "must be an absolute directory other than /, got \"\(mountRoot)\"") }
        if !["xfs", "ext4"].contains(filesystem) { problem("filesystem", "must be \"xfs\" or \"ext4\", got \"\(filesystem)\"") }
        if mountOptions.isEmpty || mountOptions.contains(where: \.isWhitespace) { problem("mount_options", "must be a comma-separated list without spaces, got \"\(mountOptions)\"") }
        if !fstab.hasPrefix("/") { problem("fstab", "must be an absolute path, got \"\(fstab)\"") }
        if commandTimeoutSeconds < 1 { problem("command_timeout_seconds", "must be at least 1, got \(commandTimeoutSeconds)") }
        return problems
    }
}

/// Gluster bricks (`"disk_manager": {"gluster": {...}}`): each disk carries one filesystem
/// mounted by UUID at `<mount_root>/<name>`, and the brick is the directory
/// `<mountpoint>/<brick_directory>` of a volume on this host. `mount_root` must not be the
/// filesystem backend's.
public struct GlusterBackendConfig: Codable, Sendable, Equatable {
    public var mountRoot = "/srv/gluster"
    /// The brick inside each mount (Gluster's advice: never the mountpoint itself, so a
    /// brick whose disk is not mounted is missing instead of filling the root filesystem).
    public var brickDirectory = "brick"
    /// The host name this host's bricks carry in `gluster volume info`; empty: this host's name.
    public var brickHost = ""
    /// The gluster CLI (more arguments may follow, e.g. `--glusterd-sock=...`).
    public var glusterCommand = ["gluster"]
    public var filesystem = "xfs"
    public var mkfsOptions: [String] = []
    public var mountOptions = "defaults,noatime,nofail"
    public var fstab = "/etc/fstab"
    /// Longest one gluster / mkfs / mount / umount call may run.
    public var commandTimeoutSeconds = 120
    /// How long an Add waits for the heal onto the new brick to finish.
    public var healTimeoutSeconds = 86_400
    /// How often an Add asks how much is left to heal.
    public var healPollSeconds = 10

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager.gluster." + field, problem: text)) }
        if !mountRoot.hasPrefix("/") || mountRoot == "/" { problem("mount_root", "must be an absolute directory other than /, got \"\(mountRoot)\"") }
        if brickDirectory.isEmpty || brickDirectory.contains("/") || brickDirectory == ".." || brickDirectory == "." { problem("brick_directory", "must be one directory name, got \"\(brickDirectory)\"") }
        if glusterCommand.isEmpty { problem("gluster_command", "must name the gluster CLI") }
        if !["xfs", "ext4"].contains(filesystem) { problem("filesystem", "must be \"xfs\" or \"ext4\", got \"\(filesystem)\"") }
        if mountOptions.isEmpty || mountOptions.contains(where: \.isWhitespace) { problem("mount_options", "must be a comma-separated list without spaces, got \"\(mountOptions)\"") }
        if !fstab.hasPrefix("/") { problem("fstab", "must be an absolute path, got \"\(fstab)\"") }
        if commandTimeoutSeconds < 1 { problem("command_timeout_seconds", "must be at least 1, got \(commandTimeoutSeconds)") }
        if healTimeoutSeconds < 1 { problem("heal_timeout_seconds", "must be at least 1, got \(healTimeoutSeconds)") }
        if healPollSeconds < 1 { problem("heal_poll_seconds", "must be at least 1, got \(healPollSeconds)") }
        return problems
    }

    /// The filesystem backend's settings for the brick mounts (the one mount/fstab mechanism).
    public var filesystemConfig: FilesystemBackendConfig {
        var config = FilesystemBackendConfig()
        config.mountRoot = mountRoot
        config.filesystem = filesystem
        config.mkfsOptions = mkfsOptions
        config.mountOptions = mountOptions
        config.fstab = fstab
        config.commandTimeoutSeconds = commandTimeoutSeconds
        return config
    }
}

/// ZFS pools (`"disk_manager": {"zfs": {...}}`): a disk that is a vdev of an imported pool is
/// taken out with `zpool offline` and its replacement put in with `zpool replace`.
public struct ZFSBackendConfig: Codable, Sendable, Equatable {
    /// `zpool`: a path, or a name looked up on PATH.
    public var zpoolPath = "zpool"
    /// Longest `zpool status` / `zpool offline` may run.
    public var commandTimeoutSeconds = 60
    /// Longest a replacement's resilver may run before the Add fails (the resilver goes on).
    public var resilverTimeoutSeconds = 86_400
    /// How often a running resilver's progress is read.
    public var progressIntervalSeconds = 5

    public init() {}

    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "disk_manager.zfs." + field, problem: text)) }
        if zpoolPath.isEmpty { problem("zpool_path", "must not be empty") }
        if commandTimeoutSeconds < 1 { problem("command_timeout_seconds", "must be at least 1, got \(commandTimeoutSeconds)") }
        if resilverTimeoutSeconds < 1 { problem("resilver_timeout_seconds", "must be at least 1, got \(resilverTimeoutSeconds)") }
        if progressIntervalSeconds < 1 { problem("progress_interval_seconds", "must be at least 1, got \(progressIntervalSeconds)") }
        return problems
    }
}
