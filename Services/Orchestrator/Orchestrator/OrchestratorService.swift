public import BynarRuntime
import BynarBus
import BynarProto
import Logging
import ServiceLifecycle

/// The orchestrator: decides what happens to failed disks, across the cluster.
///
/// This build is the foundation skeleton: it connects, announces itself, and logs every
/// service birth and death it sees on the bus. The repair workflow, the cluster brake and
/// membership hooks are not in it yet.
public struct OrchestratorService: BynarService {
    public static let serviceName = "orchestrator"
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        let statuses = try await context.bus.subscribe(Topics.allServiceStatus, as: Bynar_V1_ServiceStatus.self)
        await context.bus.markReady()
        await cancelWhenGracefulShutdown {
            for await status in statuses {
                context.logger.info("service \(status.payload.state == .birth ? "up" : "down")", metadata: [
                    "service": "\(status.payload.service)", "on_host": "\(status.payload.host)",
                    "session": "\(status.payload.session)", "retained": "\(status.retained)",
                ])
            }
        }
    }
}
