public import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// What a service reads again without a restart (a trusted-keys file, ...): every
/// registered reload runs on SIGHUP (`systemctl reload`) and every ``checkInterval`` (a
/// watch on the file by its stamp, so a key pushed to a fleet by configuration management
/// takes effect without anyone signalling anything). Each reload itself does nothing when
/// its file did not change, and keeps what it has when the new file is bad.
public final class Reloader: Sendable {
    public static let checkInterval: Duration = .seconds(5)
    private let reloads = Mutex<[@Sendable (_ why: String) -> Void]>([])

    public init() {}

    /// Adds a reload (`why`: "SIGHUP" or "file watch", for its log lines).
    public func register(_ reload: @escaping @Sendable (_ why: String) -> Void) {
        reloads.withLock { $0.append(reload) }
    }

    func reloadAll(_ why: String) {
        for reload in reloads.withLock({ $0 }) { reload(why) }
    }
}

/// Runs the reloads until graceful shutdown.
struct ReloaderService: Service, CustomStringConvertible {
    var description: String { "reloader" }
    let reloader: Reloader
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in signals {
                        logger.notice("SIGHUP: reading reloadable settings again")
                        reloader.reloadAll("SIGHUP")
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: Reloader.checkInterval)
                        if Task.isCancelled { break }
                        reloader.reloadAll("file watch")
                    }
                }
                await group.waitForAll()
            }
        }
    }
}
