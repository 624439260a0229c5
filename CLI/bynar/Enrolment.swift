import ArgumentParser
import BynarConfig
import BynarProcess
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// bynar-broker-auth's directory and the host lists in it. Every change takes the
/// directory's lock, edits a list (temp file + rename), reruns the tool with every identity
/// that exists today (operators are read back from `credentials`, so none is dropped), and
/// reloads the broker; a list whose tool run fails is put back as it was.
struct EnrolmentPlace {
    enum Reload {
        case none
        case systemd
        case pidFile(String)
    }

    struct Outcome {
        /// False when the host was in the list already.
        var added: Bool
        /// Identities the tool dropped (remove).
        var dropped: [String]
        /// What happened to the broker, for the operator.
        var reload: String
    }

    let directory: String
    let tool: String
    let reload: Reload

    private func listFile(_ role: Hosts.Role) -> String {
        directory + (role == .storage ? "/hosts" : "/central-hosts")
    }

    /// The names in a host list (blank and '#' lines skipped), in file order.
    func names(_ role: Hosts.Role) throws -> [String] {
        try HostList(path: listFile(role)).names
    }

    /// identity -> password, from the tool's `credentials` (empty before its first run).
    func credentials() throws -> [String: String] {
        let path = directory + "/credentials"
        guard access(path, F_OK) == 0 else { return [:] }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIFailure("cannot read \(path) (run as root on the broker host)", code: CLIFailure.config)
        }
        var result: [String: String] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            result[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        return result
    }

    func enrol(_ name: String, role: Hosts.Role) throws -> Outcome {
        try HostName.check(name)
        return try locked {
            let old = try HostList(path: listFile(role))
            var list = old
            let added = !list.names.contains(name)
            if added { list.append(name) }
            // Identities dropped here belong to hosts someone took out of a list by hand
            // since the last run: the tool's note names them, and so does the outcome.
            let dropped = try apply(list, replacing: old, without: nil)
            return Outcome(added: added, dropped: dropped, reload: try reloadBroker())
        }
    }

    func revoke(_ name: String, role: Hosts.Role) throws -> Outcome {
        try locked {
            let old = try HostList(path: listFile(role))
            var list = old
            guard list.names.contains(name) else {
                throw CLIFailure("\(name) is not enrolled as a \(role.rawValue) host (\(listFile(role)))")
            }
            list.remove(name)
            if role == .storage && list.names.isEmpty {
                throw CLIFailure("\(name) is the last storage host; bynar-broker-auth needs at least one (remove the broker's Bynar setup instead)")
            }
            let dropped = try apply(list, replacing: old, without: name)
            return Outcome(added: false, dropped: dropped, reload: try reloadBroker())
        }
    }

    /// Writes `list` over `old`, reruns the tool, and returns the identities it dropped.
    /// `old` is written back when the tool fails.
    private func apply(_ list: HostList, replacing old: HostList, without removed: String?) throws -> [String] {
        let before = try credentials()
        try list.write()
        do {
            try runTool(without: removed)
        } catch {
            try? old.write()
            throw error
        }
        let after = try credentials()
        return before.keys.filter { after[$0] == nil }.sorted()
    }

    private func runTool(without removed: String?) throws {
        let storage = try names(.storage)
        guard !storage.isEmpty else {
            throw CLIFailure("no storage host in \(listFile(.storage)) yet: add one first (bynar-broker-auth needs at least one)")
        }
        var central = try names(.central)
        // Ticketing hosts given to the tool by hand earlier, still in the ACL: kept, and
        // written down in central-hosts so the next run does not depend on reading the ACL.
        let adopted = try ticketingHostsInACL().filter { !storage.contains($0) && !central.contains($0) && $0 != removed }
        if !adopted.isEmpty {
            var list = try HostList(path: listFile(.central))
            for host in adopted { list.append(host) }
            try list.write()
            central += adopted
            printError("bynar: kept ticketing host(s) \(adopted.joined(separator: ", ")) from \(directory)/acl; now listed in \(listFile(.central))")
        }
        let admins = try credentials().keys.filter { $0.hasPrefix("admin.") }.map { String($0.dropFirst("admin.".count)) }.sorted()
        var command = [tool, "--hosts", listFile(.storage), "--out", directory]
        for admin in admins { command += ["--admin", admin] }
        for host in central { command += ["--ticketing-host", host] }
        let run: Tool.Run
        do {
            run = try Tool.run(command, timeout: .seconds(120), mergeStderr: true)
        } catch {
            throw CLIFailure("bynar-broker-auth: \(error)")
        }
        // Its messages name files and identities, never passwords.
        let text = run.text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard run.exitCode == 0 else {
            throw CLIFailure("bynar-broker-auth failed (\(run.exitCode.map { "exit \($0)" } ?? "signal \(run.signal ?? 0)")): \(text)")
        }
        if !text.isEmpty { printError(text) }
    }

    /// Hosts whose ticketing reply topics the current ACL grants.
    private func ticketingHostsInACL() throws -> [String] {
        guard let data = FileManager.default.contents(atPath: directory + "/acl") else { return [] }
        let prefix = "topic read bynar/v1/reply/ticketing-"
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { line in
            guard line.hasPrefix(prefix), line.hasSuffix("/#") else { return nil }
            return String(line.dropFirst(prefix.count).dropLast(2))
        }
    }

    private func reloadBroker() throws -> String {
        switch reload {
        case .none:
            return "broker not reloaded (--no-reload): reload it (systemctl reload mosquitto) before the host connects"
        case .systemd:
            let run: Tool.Run
            do {
                run = try Tool.run(["systemctl", "reload", "mosquitto"], timeout: .seconds(60), mergeStderr: true)
            } catch {
                throw CLIFailure("files written, but the broker was not reloaded: \(error)")
            }
            guard run.exitCode == 0 else {
                throw CLIFailure("files written, but `systemctl reload mosquitto` failed: \(run.text.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            return "broker reloaded (systemctl reload mosquitto)"
        case .pidFile(let path):
            guard let data = FileManager.default.contents(atPath: path),
                  let pid = pid_t(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
            else {
                throw CLIFailure("files written, but the broker was not reloaded: no pid in \(path) (--broker-pid-file, or --no-reload and reload it yourself)")
            }
            guard kill(pid, SIGHUP) == 0 else {
                throw CLIFailure("files written, but SIGHUP to the broker (pid \(pid) from \(path)) failed: \(String(cString: strerror(errno)))")
            }
            return "broker reloaded (SIGHUP to pid \(pid))"
        }
    }

    /// Runs `body` holding the directory's lock, so two enrolments never interleave.
    private func locked<T>(_ body: () throws -> T) throws -> T {
        let path = directory + "/.bynar-hosts.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIFailure("cannot open \(path): \(String(cString: strerror(errno)))", code: CLIFailure.config) }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw CLIFailure("cannot lock \(path): \(String(cString: strerror(errno)))") }
        return try body()
    }
}

/// A host list file (bynar-broker-auth's format): kept line for line, comments included.
struct HostList {
    let path: String
    private(set) var lines: [String]

    init(path: String) throws {
        self.path = path
        if access(path, F_OK) != 0 {
            lines = []
        } else if let data = FileManager.default.contents(atPath: path) {
            lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if lines.last == "" { lines.removeLast() }
        } else {
            throw CLIFailure("cannot read \(path)", code: CLIFailure.config)
        }
    }

    var names: [String] {
        lines.compactMap { line in
            let name = line.trimmingCharacters(in: .whitespaces)
            return name.isEmpty || name.hasPrefix("#") ? nil : name
        }
    }

    mutating func append(_ name: String) { lines.append(name) }

    mutating func remove(_ name: String) {
        lines.removeAll { $0.trimmingCharacters(in: .whitespaces) == name }
    }

    /// Temp file and rename: a reader never sees half a list.
    func write() throws {
        try writeFileAtomically(path, Array((lines.map { $0 + "\n" }.joined()).utf8), mode: 0o644)
    }
}

/// The host-name rule bynar-broker-auth applies (a topic level and part of a username),
/// checked before anything is written.
enum HostName {
    static func check(_ name: String) throws {
        let allowed = name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || ".-_".unicodeScalars.contains($0) }
        let why: String? =
            if name.isEmpty { "it is empty" }
            else if name.contains("/") { "it contains '/' (the MQTT topic level separator)" }
            else if name.contains("+") || name.contains("#") { "it contains an MQTT wildcard ('+' or '#')" }
            else if name.contains(":") { "it contains ':' (the user:password separator)" }
            else if !allowed || !(name.first!.isLetter || name.first!.isNumber) { "only letters, digits, '.', '_' and '-' are allowed, starting with a letter or digit" }
            else { nil }
        if let why { throw ValidationError("invalid host name \"\(name)\": \(why)") }
    }
}

/// ``AtomicFile/write(_:to:mode:)``, failing as the CLI does.
func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t) throws {
    do {
        try AtomicFile.write(bytes, to: path, mode: mode)
    } catch {
        throw CLIFailure(error.description)
    }
}

/// What one host gets: its config, its services' identities and password files, the CA and
/// its keys, as a tar.gz laid out for `tar -xzpf BUNDLE -C /`.
struct HostBundle {
    let name: String
    let role: Hosts.Role
    let installDir: String
    let brokerHost: String
    let port: Int
    let ca: String
    /// trusted-keys (storage) or operator-keys (central) text.
    let keys: String
    let template: JSONValue

    static func services(of role: Hosts.Role) -> [String] {
        role == .storage ? ["detector", "disk-manager"] : ["orchestrator", "ticketing", "notifier"]
    }

    /// The broker identity of each service, in ``services(of:)`` order.
    static func identities(of name: String, role: Hosts.Role) -> [String] {
        role == .storage ? services(of: role).map { "\($0).\(name)" } : services(of: role)
    }

    var services: [String] { Self.services(of: role) }
    var identities: [String] { Self.identities(of: name, role: role) }

    /// bynar.json: the template with host, broker and key files set.
    func config() throws -> [UInt8] {
        let keysFile = installDir + (role == .storage ? "/trusted-keys" : "/operator-keys")
        let section: JSONValue = role == .storage
            ? .object(["disk_manager": .object(["trusted_keys_file": .string(keysFile)])])
            : .object(["orchestrator": .object(["operator_keys_file": .string(keysFile), "signing_key_file": .string(installDir + "/orchestrator.key")]),
                       // The same operators may resolve tickets of the local ticket backend.
                       "ticketing": .object(["operator_keys_file": .string(keysFile)])])
        let overlay: JSONValue = .object([
            "host": .string(name),
            "broker": .object([
                "host": .string(brokerHost), "port": .integer(Int64(port)),
                "tls": .object(["ca_file": .string(installDir + "/ca.crt")]),
            ]),
        ]).merging(section)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(template.merging(overlay))) + [0x0A]
    }

    /// The central services run as user bynar (their units), the storage agents as root: a
    /// central host's secrets are root:bynar 0640, a storage host's root 0600 (the modes the
    /// services accept without the "secret file too open" warning).
    var secretMode: mode_t { role == .storage ? 0o600 : 0o640 }

    /// The files, relative to `/`, with their modes.
    func files(credentials: [String: String]) throws -> [(path: String, mode: mode_t, bytes: [UInt8])] {
        let dir = String(installDir.drop { $0 == "/" })
        var files: [(String, mode_t, [UInt8])] = [
            // Like any bynar.json, private: it may hold secrets (this one names files only).
            (dir + "/bynar.json", secretMode, try config()),
            (dir + "/ca.crt", 0o644, Array(ca.utf8)),
            (dir + (role == .storage ? "/trusted-keys" : "/operator-keys"), 0o644, Array(keys.utf8)),
        ]
        for (service, identity) in zip(services, identities) {
            guard let password = credentials[identity] else {
                throw CLIFailure("bynar-broker-auth wrote no password for \(identity) (\(installDir) bundle not written)")
            }
            files.append((dir + "/\(service).password", secretMode, Array((password + "\n").utf8)))
            let env = """
                # bynar-\(service)'s broker identity on \(name) (written by bynar hosts add; read by its unit)
                BYNAR_BROKER__USERNAME=\(identity)
                BYNAR_BROKER__PASSWORD_FILE=\(installDir)/\(service).password

                """
            files.append((dir + "/bynar-\(service).env", 0o644, Array(env.utf8)))
        }
        return files
    }

    /// Stages the files in a private directory, archives them (owned by root, only the
    /// files: tar never resets the modes of /etc or another existing directory), and puts the
    /// archive at `path` with mode 0600.
    func write(to path: String, credentials: [String: String]) throws {
        let files = try files(credentials: credentials)
        var template = Array("/tmp/bynar-bundle.XXXXXX".utf8CString)
        guard let stage = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            throw CLIFailure("cannot make a staging directory: \(String(cString: strerror(errno)))")
        }
        defer { try? FileManager.default.removeItem(atPath: stage) }
        for file in files {
            let full = stage + "/" + file.path
            let parent = String(full[..<full.lastIndex(of: "/")!])
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            let fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, file.mode)
            guard fd >= 0 else { throw CLIFailure("cannot write \(full): \(String(cString: strerror(errno)))") }
            let written = file.bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            _ = fchmod(fd, file.mode)
            close(fd)
            guard written == file.bytes.count else { throw CLIFailure("cannot write \(full)") }
        }
        let archive = stage + "/bundle.tar.gz"
        // Group bynar by name (the package makes it on the host; its number differs from host
        // to host), falling back to gid 0 where it does not exist.
        let command = ["tar", "--create", "--gzip", "--file", archive, "--owner=root:0", "--group=\(role == .storage ? "root" : "bynar"):0", "-C", stage] + files.map(\.path)
        let run: Tool.Run
        do {
            run = try Tool.run(command, timeout: .seconds(60), mergeStderr: true)
        } catch {
            throw CLIFailure("tar: \(error)")
        }
        guard run.exitCode == 0 else { throw CLIFailure("tar failed: \(run.text)") }
        guard let data = FileManager.default.contents(atPath: archive) else { throw CLIFailure("tar wrote no \(archive)") }
        try writeFileAtomically(path, Array(data), mode: 0o600)
    }
}
