public import BynarRuntime
import Logging
import ServiceLifecycle

/// The detector on one storage host: finds failing disks and reports their health.
///
/// This build is the foundation skeleton: it connects, announces its birth, leaves its
/// death as the will and shuts down cleanly. Disk checks are not in it yet, and it
/// publishes no health it has not measured.
public struct DetectorService: BynarService {
    public static let serviceName = "detector"
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        context.logger.notice("disk checks are not part of this build; announcing presence only")
        try? await gracefulShutdown()
    }
}
