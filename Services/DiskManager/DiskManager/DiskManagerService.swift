public import BynarRuntime
import BynarBus
public import BynarProto
import Logging
import ServiceLifecycle

/// The disk-manager on one storage host: the only thing that changes disks.
///
/// This build is the foundation skeleton: it serves its command topic and answers every
/// request with an ErrorReply that says the operation is not available in this build, so a
/// caller gets a clear refusal instead of silence or a made-up result.
public struct DiskManagerService: BynarService {
    public static let serviceName = "disk-manager"
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        let commands = try await context.bus.subscribe(Topics.diskManagerCommands(host: context.host), as: Bynar_V1_DiskManagerRequest.self)
        await cancelWhenGracefulShutdown {
            for await request in commands {
                await answer(request)
            }
        }
    }

    func answer(_ request: Received<Bynar_V1_DiskManagerRequest>) async {
        var reply = Bynar_V1_ErrorReply()
        if request.payload.host != context.host {
            reply.code = .malformed
            reply.message = "request for host \"\(request.payload.host)\" reached disk-manager on \"\(context.host)\""
        } else {
            reply.code = .unavailable
            reply.message = "operation \(Self.operationName(request.payload)) is not available in this build of bynar-disk-manager"
        }
        context.logger.warning("refused disk-manager request", metadata: ["request_id": "\(request.payload.requestID)", "reason": "\(reply.message)"])
        do {
            try await context.bus.reply(to: request, with: reply)
        } catch {
            context.logger.error("cannot reply", metadata: ["request_id": "\(request.payload.requestID)", "error": "\(error)"])
        }
    }

    public static func operationName(_ request: Bynar_V1_DiskManagerRequest) -> String {
        switch request.operation {
        case .list: "List"
        case .safeToRemove: "SafeToRemove"
        case .remove: "Remove"
        case .add: "Add"
        case .deploy: "Deploy"
        case .jobStatus: "JobStatus"
        case nil: "(none)"
        }
    }
}
