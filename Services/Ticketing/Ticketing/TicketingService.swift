public import BynarRuntime
import Logging
import ServiceLifecycle

/// The ticketing service: files and follows tickets for the datacenter technician.
///
/// This build is the foundation skeleton: it connects, announces itself and shuts down
/// cleanly. It does not subscribe to its work topic yet, so requests wait in the broker for
/// the build that handles them instead of being consumed and dropped.
public struct TicketingService: BynarService {
    public static let serviceName = "ticketing"
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        await context.bus.markReady()
        context.logger.notice("ticketing work is not part of this build; announcing presence only")
        try? await gracefulShutdown()
    }
}
