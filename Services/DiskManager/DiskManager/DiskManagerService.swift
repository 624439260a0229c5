import BynarAuth
public import BynarProto
public import BynarRuntime
public import BynarStore
import BynarBus
import BynarConfig
import BynarDisks
import Logging
import ServiceLifecycle

/// The disk-manager on one storage host: the only thing that changes disks, and only for
/// commands it can trust.
///
/// Every command on `bynar/v1/dm/{host}/cmd` is checked in this order: meant for this host;
/// signed by a trusted key, not expired, nonce never seen (``CommandVerifier``); a request
/// id seen before gets its first answer again (ALREADY_DONE); the disk resolves and the
/// ``RequestGate`` allows it (never a system or excluded disk, one operation per disk, the
/// host's limit on disks out, the deadline). Every command and its answer go to the audit
/// table. In this build `List` is served from the inventory; the operations that change a
/// disk are refused as not available until the Ceph and filesystem backends are wired in.
public struct DiskManagerService: BynarService {
    public static let serviceName = "disk-manager"
    public static var migrations: [LocalStore.Migration] { CommandVerifier.migrations + AuditLog.migrations }
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        let handler = try RequestHandler(context: context)
        let commands = try await context.bus.subscribe(Topics.diskManagerCommands(host: context.host), as: Bynar_V1_DiskManagerRequest.self)
        await context.bus.markReady()
        await cancelWhenGracefulShutdown {
            for await command in commands {
                let response = await handler.handle(command.payload, nowMs: Bus.nowUnixMs())
                do {
                    try await context.bus.reply(to: command, with: response)
                } catch {
                    context.logger.error("cannot reply", metadata: ["request_id": "\(command.payload.requestID)", "error": "\(error)"])
                }
            }
        }
    }

    /// The operation's name, for logs and the audit table.
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

/// Answers one command at a time (the gate and the nonce store see every command in order).
actor RequestHandler {
    let context: ServiceContext
    let config: DiskManagerConfig
    let verifier: CommandVerifier?
    let audit: AuditLog
    var gate: RequestGate

    init(context: ServiceContext) throws {
        self.context = context
        config = context.config.diskManager
        if let path = config.trustedKeysFile {
            let keys = try TrustedKeys(path: path)
            verifier = CommandVerifier(trustedKeys: keys, store: context.store, maxLifetime: .seconds(config.maxCommandLifetimeSeconds))
            context.logger.info("trusting command keys", metadata: ["keys": "\(keys.keyIDs)"])
        } else {
            verifier = nil
            context.logger.warning("no disk_manager.trusted_keys_file: every command will be refused")
        }
        audit = AuditLog(store: context.store)
        gate = RequestGate(maxDisksOut: config.maxDisksOut)
    }

    func handle(_ request: Bynar_V1_DiskManagerRequest, nowMs: Int64) -> Bynar_V1_DiskManagerResponse {
        let verification = verifier?.verify(request, nowMs: nowMs) ?? .failure(.unknownKey("(no trusted keys configured)"))
        let response = answer(request, verification: verification, nowMs: nowMs)
        do {
            _ = try audit.record(AuditRecord(request: request, receivedUnixMs: nowMs, verification: verification, response: response))
        } catch {
            context.logger.error("cannot write the audit record", metadata: ["request_id": "\(request.requestID)", "error": "\(error)"])
        }
        context.logger.notice("disk-manager command", metadata: [
            "request_id": "\(request.requestID)", "operation": "\(DiskManagerService.operationName(request))",
            "outcome": "\(response.outcome)", "reason": "\(response.reason)",
        ])
        return response
    }

    private func answer(_ request: Bynar_V1_DiskManagerRequest, verification: Result<VerifiedCommand, CommandRejection>, nowMs: Int64) -> Bynar_V1_DiskManagerResponse {
        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = request.requestID
        response.host = context.host
        response.simulated = request.simulate
        func refuse(_ reason: String) -> Bynar_V1_DiskManagerResponse {
            response.outcome = .refused
            response.reason = reason
            return response
        }
        guard request.host == context.host else { return refuse("the request is for host \"\(request.host)\", this is \"\(context.host)\"") }
        if case .failure(let why) = verification { return refuse("not authorised: \(why)") }
        if let first = try? audit.firstResponse(requestID: request.requestID) {
            var again = first
            again.originalOutcome = first.outcome
            again.outcome = .alreadyDone
            return again
        }
        guard let kind = Self.kind(of: request) else { return refuse("the request names no operation") }

        let devices: [BlockDevice]
        do {
            devices = try Inventory.scan(host: context.host, excluded: config.exclude)
        } catch {
            response.outcome = .failed
            response.failedStep = "inventory"
            response.reason = "cannot list this host's disks: \(error)"
            return response
        }
        var disk: BlockDevice?
        if kind != .list && kind != .jobStatus {
            let selector = AuditLog.selector(of: request)
            disk = devices.first { Self.matches($0, selector) }
            guard disk != nil else { return refuse("no disk on \(context.host) matches \(AuditLog.selectorText(selector))") }
        }
        let gated = RequestGate.Request(
            requestID: request.requestID, diskKey: disk?.identity.key ?? "", kind: kind, simulate: request.simulate,
            deadlineUnixMs: request.deadlineUnixMs, systemDisk: disk?.isSystemDisk ?? false, excluded: disk?.excluded ?? false
        )
        switch gate.received(gated, nowMs: nowMs) {
        case .alreadyDone(let outcome):
            response.outcome = .alreadyDone
            response.originalOutcome = Self.wire(outcome)
            return response
        case .refuse(let reason):
            return refuse(reason)
        case .start:
            break
        }
        switch kind {
        case .list:
            response.outcome = .success
            response.diskList.disks = devices.map(Self.managed)
            response.steps = ["list \(devices.count) disks"]
        default:
            response.outcome = .refused
            response.reason = "\(DiskManagerService.operationName(request)) is not available in this build of bynar-disk-manager (no storage backend wired yet)"
        }
        gate.finished(requestID: request.requestID, outcome: Self.gateOutcome(response.outcome))
        do {
            _ = try audit.remember(requestID: request.requestID, response: response, nowMs: nowMs)
        } catch {
            context.logger.error("cannot remember the outcome", metadata: ["request_id": "\(request.requestID)", "error": "\(error)"])
        }
        return response
    }

    static func kind(of request: Bynar_V1_DiskManagerRequest) -> RequestGate.Request.Kind? {
        switch request.operation {
        case .list: .list
        case .safeToRemove: .safeToRemove
        case .remove: .remove
        case .add: .add
        case .deploy: .deploy
        case .jobStatus: .jobStatus
        case nil: nil
        }
    }

    /// Whether every field the selector sets names `device`.
    static func matches(_ device: BlockDevice, _ selector: Bynar_V1_DiskSelector) -> Bool {
        let identity = device.identity
        let checks: [(String, String)] = [
            (selector.key, identity.key), (selector.wwn, identity.wwn), (selector.serial, identity.serial),
            (selector.byPath, identity.byPath), (selector.devPath, identity.devPath),
        ]
        let given = checks.filter { !$0.0.isEmpty }
        return !given.isEmpty && given.allSatisfy { $0.0 == $0.1 }
    }

    static func managed(_ device: BlockDevice) -> Bynar_V1_ManagedDisk {
        var disk = Bynar_V1_ManagedDisk()
        disk.disk = device.identity
        disk.systemDisk = device.isSystemDisk
        disk.excluded = device.excluded
        return disk
    }

    static func gateOutcome(_ outcome: Bynar_V1_Outcome) -> RequestGate.Outcome {
        switch outcome {
        case .success: .success
        case .skipped: .skipped
        case .failed: .failed
        default: .refused
        }
    }

    static func wire(_ outcome: RequestGate.Outcome) -> Bynar_V1_Outcome {
        switch outcome {
        case .success: .success
        case .skipped: .skipped
        case .refused: .refused
        case .failed: .failed
        }
    }
}
