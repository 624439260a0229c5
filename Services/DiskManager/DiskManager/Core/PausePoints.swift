#if canImport(Glibc)
import Glibc
#endif

/// Test-only places where a job stops dead, so a test can kill -9 the disk-manager at an
/// exact step boundary and prove the restart finishes the job. Off unless the environment
/// names them: `TEST_DISK_MANAGER_PAUSE_AT=accepted,Remove:2,Add:done` (a production
/// service has no such variable; the names are logged when set, loudly).
///
/// Names: `accepted` (the job row is written, the ACCEPTED answer not yet sent),
/// `<Operation>:<n>` (step n of the backend's operation is about to start: every step
/// before it is done), `<Operation>:done` (the backend finished, the job row not yet
/// updated). Reaching one writes `bynar-pause-point <name> reached` to standard error and
/// blocks that thread for ever.
enum PausePoints {
    static let names: Set<String> = {
        guard let value = getenv("TEST_DISK_MANAGER_PAUSE_AT") else { return [] }
        return Set(String(cString: value).split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
    }()

    /// Stops here for ever if the environment names `name`.
    static func reach(_ name: String) {
        guard names.contains(name) else { return }
        let line = Array("bynar-pause-point \(name) reached\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        while true { sleep(3600) }
    }
}
