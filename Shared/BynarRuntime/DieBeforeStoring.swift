public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Test only: with `<variable>=N` in the environment (e.g.
/// `TEST_TICKETING_DIE_BEFORE_STORING=1`), the service kills itself with SIGKILL as it
/// takes its N-th message, after libmosquitto acknowledged it to the broker and before it
/// is stored: the window in which a received message is lost unless its sender sends it
/// until answered (`Outbox.Receipt`, docs/bus.md). Unset (production): never.
public final class DieBeforeStoring: Sendable {
    private let variable: String
    private let remaining: Mutex<Int?>

    public init(variable: String) {
        self.variable = variable
        let value = getenv(variable).flatMap { Int(String(cString: $0)) }
        remaining = Mutex(value.flatMap { $0 > 0 ? $0 : nil })
    }

    /// Counts one message; kills the process at the N-th.
    public func count(messageId: String, logger: Logger) {
        let die = remaining.withLock { left -> Bool in
            guard let count = left else { return false }
            left = count - 1
            return count == 1
        }
        guard die else { return }
        logger.warning("\(variable): killing this process before storing the message", metadata: ["message_id": "\(messageId)"])
        kill(getpid(), SIGKILL)
    }
}
