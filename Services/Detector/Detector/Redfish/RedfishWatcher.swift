import BynarBus
import BynarConfig
import BynarProto
import BynarRuntime
import Logging

/// The detector's window on its own server's BMC: every `poll_seconds` it reads the BMC
/// over Redfish (``RedfishReader``), judges the parts (``RedfishJudge``), gives drive
/// findings to the disks they are (``DetectorEngine/redfishView(_:)``) and publishes what
/// ``HardwareTracker`` says through the outbox: `bynar/v1/hw/{host}/events` and the
/// retained `bynar/v1/hw/{host}/state`.
struct RedfishWatcher {
    let config: DetectorRedfishConfig
    let engine: DetectorEngine
    let context: ServiceContext

    func run() async {
        let logger = context.logger
        let client: RedfishClient
        do {
            client = try RedfishClient(config: config)
        } catch {
            logger.error("cannot read the BMC: its hardware is not watched", metadata: ["error": "\(error)"])
            return
        }
        if config.insecure {
            logger.warning("INSECURE: the BMC's TLS certificate is NOT verified (detector.redfish.insecure); for a lab only", metadata: ["url": "\(config.url)"])
        }
        let reader = RedfishReader(client: client)
        let judge = RedfishJudge(lifeLeftWarningPercent: Double(config.lifeLeftWarningPercent))
        var tracker = HardwareTracker()
        var failing = false
        while !Task.isCancelled {
            let outputs: [HardwareTracker.Output]
            let nowMs = Bus.nowUnixMs()
            do {
                let reading = try await reader.read()
                let findings = judge.judge(reading.parts)
                let diskKeys = await engine.redfishView(findings)
                let parts = Dictionary(reading.parts.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
                outputs = tracker.read(findings, partsRead: reading.parts.count, gaps: reading.gaps, diskKeys: diskKeys, parts: parts, nowMs: nowMs)
                if failing { logger.notice("the BMC answers again", metadata: ["url": "\(config.url)"]) }
                failing = false
            } catch {
                if !failing { logger.warning("cannot read the BMC; its last findings stand until it answers", metadata: ["error": "\(error)"]) }
                failing = true
                outputs = tracker.failed("\(error)", nowMs: nowMs)
            }
            var events: [Outbox.Event] = []
            for output in outputs {
                switch output {
                case .event(let event):
                    let finding = event.finding
                    logger.notice("hardware part changed", metadata: ["part": "\(finding.part.kind) \(finding.part.name)", "location": "\(finding.part.location)",
                                                                     "serial": "\(finding.part.serial)", "from": "\(event.from)", "to": "\(event.to)", "detail": "\(finding.detail)"])
                    events.append(Outbox.Event(event, to: Topics.hardwareEvents(host: context.host)))
                case .state(let state):
                    events.append(Outbox.Event(state, to: Topics.hardwareState(host: context.host), retain: true))
                }
            }
            if !events.isEmpty {
                do {
                    try context.outbox.commit(events)
                } catch {
                    logger.error("cannot queue the hardware messages", metadata: ["error": "\(error)"])
                }
            }
            // The read touched HTTP and TLS code nothing else runs: once its connection has
            // closed (idle timeout 1 s), give those pages back now, not at the next periodic
            // trim (docs/performance.md, "Redfish poller").
            let settle = min(2, config.pollSeconds)
            try? await Task.sleep(for: .seconds(settle))
            ResidentCode.release()
            try? await Task.sleep(for: .seconds(config.pollSeconds - settle))
        }
        await client.shutdown()
    }
}
