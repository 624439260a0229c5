import ArgumentParser
import BynarAuth
#if canImport(Glibc)
import Glibc
#endif

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Keys that sign disk-manager commands.",
        subcommands: [Generate.self]
    )

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an Ed25519 key pair: the private key file (mode 0600) and the line for the disk-managers' trusted-keys file."
        )

        @Option(name: .customLong("id"), help: "Key id (no spaces), e.g. orchestrator-1.")
        var keyID: String

        @Option(help: "Where to write the private key file.")
        var out: String

        func run() throws {
            let files = try KeyFiles.generate(keyID: keyID)
            // O_EXCL: never overwrite an existing key; 0600 from the start, not chmod after.
            let fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(KeyFiles.privateKeyFileMode))
            guard fd >= 0 else { throw ValidationError("cannot create \(out): \(String(cString: strerror(errno)))") }
            let bytes = Array(files.privateKeyFileText.utf8)
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            guard written == bytes.count else { throw ValidationError("cannot write \(out)") }
            print(files.trustedKeysLine)
        }
    }
}
