/// The original Bynar's `bynar.json` fields that this Bynar reads differently or not at
/// all: each is mapped, refused, or named at start with what replaces it; none is ignored
/// silently.
extension BynarConfig {
    /// Bynar's `backend` and `/etc/bynar/ceph.json` (`config_file`, `user_id`): `"ceph"`
    /// turns on the disk-manager's Ceph backend when `disk_manager.ceph` is not set, with
    /// the cluster config and cephx user that file names. Any other backend is refused.
    /// `cephJSON` is the parsed `ceph.json` next to the config file, if there is one.
    mutating func mapLegacyBackend(cephJSON: JSONValue?, cephJSONPath: String) -> [FieldError] {
        guard let backend else { return [] }
        guard backend == "ceph" else {
            return [FieldError(field: "backend", problem: "\"\(backend)\" is not a backend of this Bynar: configure disk_manager.ceph (Ceph OSDs) or disk_manager.filesystem (plain data disks)")]
        }
        guard diskManager.ceph == nil else { return [] }
        var ceph = CephBackendConfig()
        var problems: [FieldError] = []
        if let cephJSON {
            guard case .object(let fields) = cephJSON else {
                return [FieldError(field: "backend", problem: "\(cephJSONPath) must be a JSON object with config_file and user_id")]
            }
            for (key, value) in fields {
                switch (key, value) {
                case ("config_file", .string(let path)): ceph.configFile = path
                case ("user_id", .string(let user)): ceph.clientName = user.hasPrefix("client.") ? user : "client.\(user)"
                case ("config_file", _), ("user_id", _):
                    problems.append(FieldError(field: "backend", problem: "\(cephJSONPath): \(key) must be a string"))
                default:
                    // Bynar's pool_name and the like: the disk-manager asks the cluster itself.
                    continue
                }
            }
        }
        diskManager.ceph = ceph
        return problems
    }

    /// What each of Bynar's fields set here became, for the start-up log.
    public var legacyNotes: [String] {
        var notes: [String] = []
        if backend == "ceph" {
            notes.append("backend \"ceph\" (Bynar's field): the disk-manager's Ceph backend is on (disk_manager.ceph: config_file \(diskManager.ceph?.configFile ?? "?"), client \(diskManager.ceph?.clientName ?? "?"))")
        }
        if managerHost != nil || managerPort != nil {
            notes.append("manager_host/manager_port (Bynar's fields) are not used: every service reaches the others through the broker (broker.host, broker.port)")
        }
        if vaultEndpoint != nil || vaultToken != nil {
            notes.append("vault_endpoint/vault_token (Bynar's fields) are not used: command keys are files (`bynar keys generate`; disk_manager.trusted_keys_file, orchestrator.signing_key_file)")
        }
        if daemonOutput != nil || daemonPid != nil {
            notes.append("daemon_output/daemon_pid (Bynar's fields) are not used: services log to stderr and run under systemd (deploy/systemd)")
        }
        if database != nil {
            notes.append("database (Bynar's Postgres) is not used: each service keeps its state in SQLite under db_location (\(dbLocation))")
        }
        return notes
    }
}
