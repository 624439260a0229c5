import ArgumentParser
import BynarAuth
import BynarConfig
import BynarProcess
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// `bynar hosts add|remove|list`: enrolment, run on the broker host (where
/// `bynar-broker-auth`'s directory lives). docs/install.md walks through a fleet.
struct Hosts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Enrol hosts: their broker identities, ACL entries and an install bundle (run on the broker host, as root).",
        discussion: """
        Storage hosts are listed in AUTH_DIR/hosts (the file bynar-broker-auth reads), central
        hosts (orchestrator, ticketing, notifier) in AUTH_DIR/central-hosts. Every change reruns
        bynar-broker-auth (existing passwords are kept) and reloads the broker. Passwords and keys
        go only into files (mode 0600); none is printed or passed on a command line.
        """,
        subcommands: [Add.self, Remove.self, List.self]
    )

    enum Role: String, ExpressibleByArgument, CaseIterable {
        case storage, central
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a host's broker identities and ACL entries, reload the broker, and write the host's bundle.",
            discussion: """
            The bundle is a tar.gz (mode 0600) holding INSTALL_DIR (default /etc/bynar) for the host:
            bynar.json (host, broker, TLS, key files), one bynar-<service>.env per service naming its
            broker identity and password file, the password files (0600), the CA certificate and the
            trusted keys (storage: the disk-managers' trusted-keys; central: the orchestrator's
            operator-keys). Install it on the host with `tar -xzpf BUNDLE -C /`. Adding a host that
            is enrolled already writes its bundle again with its current passwords.
            """
        )

        @Argument(help: "The host's name on the bus (its `host` setting).")
        var name: String

        @Option(help: "storage: detector and disk-manager identities; central: the orchestrator's, ticketing's and notifier's.")
        var role: Role = .storage

        @Option(name: .customLong("broker-host"), help: "The broker's name as the host connects to it (its TLS certificate must name it).")
        var brokerHost: String

        @Option(name: .customLong("storage-port"), help: "The broker's storage-host listener.")
        var storagePort: Int = 8883

        @Option(name: .customLong("central-port"), help: "The broker's central listener.")
        var centralPort: Int = 8884

        @Option(name: .customLong("ca"), help: "CA certificate the host trusts for the broker (default: AUTH_DIR/ca.crt).")
        var caFile: String?

        @Option(name: .customLong("trusted-keys"), help: "Storage hosts: the disk-managers' trusted-keys file (default: AUTH_DIR/trusted-keys).")
        var trustedKeys: String?

        @Option(name: .customLong("operator-keys"), help: "Central hosts: the orchestrator's operator-keys file (default: AUTH_DIR/operator-keys).")
        var operatorKeys: String?

        @Option(name: .customLong("config-template"), help: "A bynar.json to start from (backends, detector, notifier settings); host, broker and key-file paths are set over it.")
        var template: String?

        @Option(name: .customLong("install-dir"), help: "Where the bundle's files go on the host; paths in its config point there.")
        var installDir: String = "/etc/bynar"

        @Option(help: "Where to write the bundle (default: ./bynar-host-NAME.tar.gz).")
        var out: String?

        @OptionGroup var enrolment: EnrolmentOptions

        func run() async throws {
            try await reportingFailures {
                let place = try enrolment.place()
                guard installDir.hasPrefix("/"), !installDir.split(separator: "/").contains("..") else {
                    throw ValidationError("--install-dir must be an absolute path without '..', got \"\(installDir)\"")
                }
                for (flag, port) in [("--storage-port", storagePort), ("--central-port", centralPort)] where !(1...65535).contains(port) {
                    throw ValidationError("\(flag) must be 1-65535, got \(port)")
                }
                // Every input is read and checked before anything changes.
                let ca = try readInput(caFile ?? place.directory + "/ca.crt", what: "the CA certificate (--ca)")
                guard ca.contains("-----BEGIN CERTIFICATE-----") else {
                    throw CLIFailure("\(caFile ?? place.directory + "/ca.crt"): not a PEM certificate", code: CLIFailure.config)
                }
                let keysPath = role == .storage ? (trustedKeys ?? place.directory + "/trusted-keys") : (operatorKeys ?? place.directory + "/operator-keys")
                let keys = try readInput(keysPath, what: role == .storage ? "the trusted keys (--trusted-keys)" : "the operator keys (--operator-keys)")
                do {
                    _ = try TrustedKeys(fileText: keys)
                } catch {
                    throw CLIFailure("\(keysPath): \(error)", code: CLIFailure.config)
                }
                let base = try template.map { path -> JSONValue in
                    let value: JSONValue
                    do { value = try JSONValue.parse(Array(try readInput(path, what: "the config template").utf8)) } catch let failure as CLIFailure { throw failure } catch {
                        throw CLIFailure("\(path): not JSON: \(error)", code: CLIFailure.config)
                    }
                    guard case .object(let members) = value else { throw CLIFailure("\(path): must be a JSON object", code: CLIFailure.config) }
                    if case .object(let broker)? = members["broker"] {
                        for field in ["username", "password", "password_file", "client_id"] where broker[field] != nil {
                            throw CLIFailure("\(path): broker.\(field): the bundle sets each service's identity (its bynar-<service>.env); take it out of the template", code: CLIFailure.config)
                        }
                    }
                    return value
                } ?? .object([:])

                let outcome = try place.enrol(name, role: role)
                let credentials = try place.credentials()
                let bundle = HostBundle(
                    name: name, role: role, installDir: installDir, brokerHost: brokerHost,
                    port: role == .storage ? storagePort : centralPort, ca: ca, keys: keys, template: base
                )
                let path = out ?? "bynar-host-\(name).tar.gz"
                try bundle.write(to: path, credentials: credentials)
                print(outcome.added ? "enrolled \(name) (\(role.rawValue))" : "\(name) (\(role.rawValue)) was enrolled already; its passwords are unchanged")
                print("identities: \(bundle.identities.joined(separator: ", "))")
                if !outcome.dropped.isEmpty {
                    print("also dropped (their hosts are no longer listed): \(outcome.dropped.joined(separator: ", "))")
                }
                print(outcome.reload)
                print("bundle: \(path) (mode 0600; holds passwords: copy it to \(name) over a secure channel, then delete it)")
                let file = path.split(separator: "/").last.map(String.init) ?? path
                let restart = "systemctl restart \(bundle.services.map { "bynar-\($0)" }.joined(separator: " "))"
                if role == .central {
                    // The orchestrator's signing key is made on the host and never leaves it.
                    let key = installDir + "/orchestrator.key"
                    print("on \(name): tar -xzpf \(file) -C / && bynar keys generate --id orchestrator-\(name) --out \(key) && chgrp bynar \(key) && chmod 0640 \(key) && \(restart)")
                    print("the line `bynar keys generate` prints goes into \(place.directory)/trusted-keys and every storage host's \(installDir)/trusted-keys (disk-managers read it again on change)")
                } else {
                    print("on \(name): tar -xzpf \(file) -C / && \(restart)")
                }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a host: drop its broker identities and ACL entries and reload the broker, which disconnects them.",
            discussion: """
            A central host's identities (orchestrator, ticketing, notifier) are shared by every
            central host: removing one drops only its own ACL entries. To lock a retired central
            host out, rotate those passwords (docs/install.md).
            """
        )

        @Argument(help: "The host's name.")
        var name: String

        @Option(help: "Which list to take it out of.")
        var role: Role = .storage

        @OptionGroup var enrolment: EnrolmentOptions

        func run() async throws {
            try await reportingFailures {
                let place = try enrolment.place()
                let outcome = try place.revoke(name, role: role)
                print("removed \(name) (\(role.rawValue)); \(outcome.dropped.isEmpty ? "no identity of its own" : "identities dropped: \(outcome.dropped.joined(separator: ", "))")")
                print(outcome.reload)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The enrolled hosts and whether their identities exist.")

        @Option(name: .customLong("auth-dir"), help: "bynar-broker-auth's directory.")
        var authDir: String = "/etc/mosquitto/bynar"

        func run() async throws {
            try await reportingFailures {
                let place = EnrolmentPlace(directory: authDir, tool: "", reload: .none)
                let known = Set(try place.credentials().keys)
                for (role, names) in [(Role.storage, try place.names(.storage)), (.central, try place.names(.central))] {
                    for name in names {
                        let missing = HostBundle.identities(of: name, role: role).filter { !known.contains($0) }
                        print("\(name)\t\(role.rawValue)\t\(missing.isEmpty ? "ok" : "missing: \(missing.joined(separator: ", ")) (rerun bynar hosts add)")")
                    }
                }
            }
        }
    }
}

/// Where enrolment happens and how the broker is told.
struct EnrolmentOptions: ParsableArguments {
    @Option(name: .customLong("auth-dir"), help: "bynar-broker-auth's directory: hosts, central-hosts, credentials, passwd, acl.")
    var authDir: String = "/etc/mosquitto/bynar"

    @Option(name: .customLong("auth-tool"), help: "bynar-broker-auth (default: the installed one).")
    var authTool: String?

    @Option(name: .customLong("broker-pid-file"), help: "Reload the broker with SIGHUP to this pid instead of `systemctl reload mosquitto`.")
    var brokerPidFile: String?

    @Flag(name: .customLong("no-reload"), help: "Write the files only; reload the broker yourself.")
    var noReload = false

    func place() throws -> EnrolmentPlace {
        let candidates = authTool.map { [$0] } ?? [
            "/usr/share/bynar/mosquitto/bynar-broker-auth", "/usr/local/sbin/bynar-broker-auth", "/usr/sbin/bynar-broker-auth",
        ]
        guard let tool = candidates.first(where: { access($0, X_OK) == 0 }) else {
            throw CLIFailure("bynar-broker-auth not found (looked at \(candidates.joined(separator: ", "))); name it with --auth-tool", code: CLIFailure.config)
        }
        var isDirectory = false
        guard FileManager.default.fileExists(atPath: authDir, isDirectory: &isDirectory), isDirectory else {
            throw CLIFailure("\(authDir): no such directory (--auth-dir; deploy/mosquitto/README.md sets it up)", code: CLIFailure.config)
        }
        let reload: EnrolmentPlace.Reload
        if noReload {
            reload = .none
        } else if let brokerPidFile {
            reload = .pidFile(brokerPidFile)
        } else if access("/run/systemd/system", F_OK) == 0 {
            reload = .systemd
        } else {
            reload = .pidFile("/run/mosquitto/mosquitto.pid")
        }
        return EnrolmentPlace(directory: authDir, tool: tool, reload: reload)
    }
}

/// Reads a small input file, or fails naming it and what it is for.
private func readInput(_ path: String, what: String) throws -> String {
    guard access(path, R_OK) == 0, let data = FileManager.default.contents(atPath: path) else {
        throw CLIFailure("cannot read \(what): \(path): \(String(cString: strerror(errno == 0 ? EIO : errno)))", code: CLIFailure.config)
    }
    return String(decoding: data, as: UTF8.self)
}
