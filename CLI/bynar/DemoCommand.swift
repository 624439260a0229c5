import ArgumentParser
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// `bynar demo fail|replace|disks`: the hardware and the technician of the local demo
/// (`scripts/run-local --demo`). They run `scripts/demo` of the source tree the binary was
/// built in: failing a disk for real and swapping one are done to loop devices and faultfs
/// files of that checkout, which Bynar itself never touches; an installed `bynar` (no
/// checkout around it) says so.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The local demo's disks (scripts/run-local --demo, as root): fail one for real, put a blank one in its slot, list them.",
        subcommands: [Fail.self, Replace.self, Disks.self]
    )

    struct Fail: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "DISK (d1, d2, ...) fails for real: every sector returns EIO, the kernel logs I/O errors.")
        @Argument(help: "The demo disk: d1, d2, ...") var disk: String
        func run() throws { try Demo.script(["fail", disk]) }
    }

    struct Replace: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A technician swaps in a blank disk in DISK's slot (same /dev/loopN, new serial), once Bynar took the failed one out.")
        @Argument(help: "The demo disk: d1, d2, ...") var disk: String
        func run() throws { try Demo.script(["replace", disk]) }
    }

    struct Disks: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The demo's slots: disk, loop device, mountpoint, faults.")
        func run() throws { try Demo.script(["disks"]) }
    }

    /// Replaces this process with `scripts/demo ARGUMENTS` of the checkout around the binary.
    static func script(_ arguments: [String]) throws {
        guard let path = demoScript() else {
            throw ValidationError("bynar demo runs from a source checkout (scripts/run-local --demo); no scripts/demo near \(executablePath() ?? "this binary")")
        }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        execv(path, argv)
        throw CLIFailure("cannot run \(path): \(String(cString: strerror(errno)))")
    }

    /// `scripts/demo` in the first directory above the executable that has one (the binary of
    /// a checkout's build lives in `.build/<triple>/debug/`).
    static func demoScript() -> String? {
        guard var directory = executablePath() else { return nil }
        for _ in 0..<6 {
            guard let slash = directory.lastIndex(of: "/"), slash != directory.startIndex else { return nil }
            directory = String(directory[..<slash])
            let candidate = directory + "/scripts/demo"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
