import BynarBus
import BynarProto
import Logging

/// The shell of ``HardwareIncidents``: takes the hosts' hardware states and events and the
/// ticket events in batches, decides each with the core, and commits the incidents it
/// changed with the messages it queued in one transaction (the outbox, the one way every
/// service commits). A batch that cannot be committed is decided again from the state
/// before it, so nothing is lost and nothing is sent that was not kept.
actor HardwareEngine {
    let inputs = Mailbox<HardwareIncidents.Input>()
    private var core: HardwareIncidents
    private let journal: IncidentJournal
    private let outbox: Outbox
    private let logger: Logger

    init(journal: IncidentJournal, outbox: Outbox, healthySeconds: Int, ticketReceiptSeconds: Int, logger: Logger) throws {
        self.journal = journal
        self.outbox = outbox
        self.logger = logger
        let open = try journal.openHardwareIncidents()
        core = HardwareIncidents(open: open, healthySeconds: healthySeconds, ticketReceiptSeconds: ticketReceiptSeconds)
        if !open.isEmpty { logger.notice("open hardware incidents resumed", metadata: ["count": "\(open.count)"]) }
    }

    func run() async {
        while !Task.isCancelled {
            let batch = await inputs.next(upTo: 512)
            guard !batch.isEmpty else { continue }
            let before = core
            while !Task.isCancelled {
                var effects = HardwareIncidents.Effects()
                for input in batch { effects.merge(core.handle(input, nowMs: Bus.nowUnixMs())) }
                do {
                    if !effects.changed.isEmpty || !effects.messages.isEmpty {
                        _ = try outbox.commit(effects.messages, state: try journal.hardwareChanges(effects.changed))
                    }
                    for line in effects.logs { logger.log(level: line.level, "\(line.message)", metadata: line.metadata.mapValues { "\($0)" }) }
                    break
                } catch {
                    logger.error("cannot journal hardware incidents; deciding the batch again in 1 s", metadata: ["error": "\(error)", "inputs": "\(batch.count)"])
                    core = before
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }
}
