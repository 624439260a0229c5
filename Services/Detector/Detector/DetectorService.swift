public import BynarRuntime
import BynarDisks
import BynarBus
import BynarConfig
public import BynarStore
import Logging
import ServiceLifecycle

/// The detector on one storage host: finds failing disks early, never cries wolf, and says
/// so on the bus.
///
/// It keeps an inventory of the host's disks (libudev, kernel uevents), samples SMART
/// (libatasmart, smartctl), inspects mounted filesystems and probes them, and follows the
/// kernel log, feeding every fact into a per-slot ``DiskHealthMachine``. State changes are
/// announced through the outbox (`bynar/v1/disk/{host}/events`) and the current health of
/// each disk is retained (`bynar/v1/disk/{host}/{disk}/health`). It never repairs, formats
/// or unmounts a disk.
public struct DetectorService: BynarService {
    public static let serviceName = "detector"
    public static var migrations: [LocalStore.Migration] { DetectorEngine.migrations }
    public static var commandUsage: [(usage: String, summary: String)] { DetectorCommands.usage }
    let context: ServiceContext

    public init(context: ServiceContext) throws {
        self.context = context
    }

    public func run() async throws {
        let config = context.config.detector
        let engine = DetectorEngine(context: context)
        try await engine.restore()

        let kernelLog: KernelLog?
        do {
            kernelLog = try KernelLog(path: config.kmsgPath)
        } catch {
            context.logger.error("cannot follow the kernel log; kernel I/O errors are only seen at the next check", metadata: ["error": "\(error)"])
            kernelLog = nil
        }
        let blockEvents: BlockEventMonitor?
        do {
            blockEvents = try BlockEventMonitor()
        } catch {
            context.logger.error("cannot watch kernel uevents; disks coming and going are only seen at the next check", metadata: ["error": "\(error)"])
            blockEvents = nil
        }
        kernelLog?.start()
        let rescan = Rescan(engine: engine, host: context.host, exclude: config.exclude, only: config.watchOnly, logger: context.logger)
        await rescan.now()
        await engine.refreshAll()
        await context.bus.markReady()
        let appWatcher = config.apps.isEmpty ? nil
            : AppWatcher(apps: config.apps, peers: config.appPeers, address: config.appAddress, bus: context.bus, outbox: context.outbox, host: context.host, logger: context.logger)

        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                if let kernelLog {
                    group.addTask {
                        for await error in kernelLog.errors {
                            await engine.kernelError(error, nowMs: Bus.nowUnixMs())
                        }
                    }
                }
                if let ceph = config.ceph {
                    group.addTask {
                        await CephWatcher(config: ceph, engine: engine, logger: context.logger).run()
                    }
                }
                if let zfs = config.zfs {
                    group.addTask {
                        await ZFSWatcher(config: zfs, engine: engine, outbox: context.outbox, host: context.host, logger: context.logger).run()
                    }
                }
                if let appWatcher {
                    group.addTask { await appWatcher.run() }
                }
                if let redfish = config.redfish {
                    group.addTask {
                        await RedfishWatcher(config: redfish, engine: engine, context: context).run()
                    }
                }
                if let blockEvents {
                    group.addTask {
                        for await event in blockEvents.events where event.deviceType == .disk {
                            await rescan.now()
                        }
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(config.checkIntervalSeconds))
                        if Task.isCancelled { break }
                        await rescan.now()
                        for id in await engine.presentSlots {
                            await engine.check(id)
                        }
                    }
                }
                await group.waitForAll()
            }
        }
        await appWatcher?.shutDown()
        kernelLog?.stop()
        blockEvents?.stop()
    }
}

/// Scans the inventory and hands it to the engine.
struct Rescan: Sendable {
    let engine: DetectorEngine
    let host: String
    let exclude: [String]
    let only: [String]
    let logger: Logger

    func now() async {
        do {
            // `watch_only`: every other disk is someone else's, as if on another machine.
            let devices = try Inventory.scan(host: host, excluded: exclude)
                .filter { only.isEmpty || Inventory.exclusionReason(for: $0.identity, excluded: [], only: only) == nil }
            await engine.reconcile(devices, nowMs: Bus.nowUnixMs())
        } catch {
            logger.error("cannot scan block devices", metadata: ["error": "\(error)"])
        }
    }
}
