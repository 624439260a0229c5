import BynarBus
import BynarConfig
import BynarProto
import Logging
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Hardware incidents, as a pure core: a server part a host's BMC reports FAILED (a power
/// supply, a fan, a DIMM, a controller, a drive Bynar does not manage) gets one incident and
/// one ticket for the technician, naming the part, its location and serial; nothing is sent
/// to the disk-manager. A drive whose serial is a disk the host's detector watches (its
/// finding names the disk) is not one: it goes through the disk workflow.
///
/// Rules (docs/hardware.md, "Hardware incidents"):
/// - HW1 A part FAILED with no open incident for that host and part opens one: it is
///   journaled, a ticket is asked for and people are told, in one commit.
/// - HW2 A drive the detector matched to a watched disk opens none (the disk workflow has it).
/// - HW3 A part going to WARNING (live event, not a retained state) tells people; no ticket.
/// - HW4 An open incident's part that reads healthy (its event says OK, or a read of a
///   reachable BMC no longer lists it) for `hardware_healthy_seconds` closes the incident
///   and its ticket, saying so on the ticket; failing again before that keeps the incident.
/// - HW5 The ticket's key is kept when ticketing files it; a ticket a person resolves or
///   closes while the BMC still reports the part failed gets one comment saying so, and the
///   incident stays open; a ticket that could not be filed, or whose OPEN no ticket event
///   confirmed, is asked for again every ``refileMs``.
/// - HW6 A retained state (an orchestrator starting, or one taking over) reconciles: FAILED
///   parts without an incident open one (HW1), open incidents whose part is healthy start
///   their healthy time (HW4). The host is always the topic's.
///
/// It does no I/O: ``HardwareEngine`` journals ``Effects/changed`` and queues
/// ``Effects/messages`` in one transaction (the outbox, as every service commits).
struct HardwareIncidents: Sendable {
    /// One incident: the part, its ticket, and whether it reads healthy now.
    struct Incident: Sendable, Equatable, Codable {
        enum TicketState: String, Sendable, Codable {
            /// Asked for, not yet filed.
            case requested
            case opened
            /// Resolved or closed by a person (the part may still be failed).
            case resolvedByPerson
            /// Ticketing could not file it (asked again after ``refileMs``).
            case failed
        }

        var id: String
        var host: String
        var partID: String
        /// The part's latest finding (serialized `Bynar_V1_HardwarePartFinding`).
        var findingBytes: [UInt8]
        var openedMs: Int64
        var updatedMs: Int64
        var ticket: TicketState = .requested
        var ticketKey = ""
        var ticketURL = ""
        var ticketAskedMs: Int64
        /// Since when the BMC reports the part healthy (nil: failed now).
        var healthySinceMs: Int64?
        /// Whether the "still failed" comment went on a ticket a person resolved.
        var toldStillFailed = false
        /// Closed (the part healthy for long enough): when and why.
        var closedMs: Int64?
        var closedWhy = ""

        var isOpen: Bool { closedMs == nil }
        var finding: Bynar_V1_HardwarePartFinding {
            get { (try? Bynar_V1_HardwarePartFinding(serializedBytes: findingBytes)) ?? Bynar_V1_HardwarePartFinding() }
            set { findingBytes = (try? newValue.serializedBytes()) ?? [] }
        }
    }

    enum Input: Sendable {
        /// A host's state as its detector last read its BMC (`retained`: said again to a new
        /// subscriber, not a new read).
        case state(host: String, Bynar_V1_HardwareState)
        /// A part's severity changed on a host.
        case event(host: String, Bynar_V1_HardwareEvent)
        case ticket(Bynar_V1_TicketEvent)
        case tick
    }

    struct Effects: Sendable {
        /// Incidents opened or changed: journaled with the messages.
        var changed: [Incident] = []
        var messages: [Outbox.Event] = []
        var logs: [RepairCore.LogLine] = []

        var isEmpty: Bool { changed.isEmpty && messages.isEmpty && logs.isEmpty }

        mutating func merge(_ other: Self) {
            for incident in other.changed {
                if let index = changed.firstIndex(where: { $0.id == incident.id }) { changed[index] = incident } else { changed.append(incident) }
            }
            messages += other.messages
            logs += other.logs
        }
    }

    /// A ticket that could not be filed is asked for again this often.
    static let refileMs: Int64 = 600_000
    let healthyMs: Int64
    let ticketReceipt: Duration
    /// Open incidents by "host/part id".
    private(set) var open: [String: Incident] = [:]
    private var now: Int64 = 0
    private var effects = Effects()

    init(open incidents: [Incident], healthySeconds: Int, ticketReceiptSeconds: Int) {
        healthyMs = Int64(healthySeconds) * 1000
        ticketReceipt = .seconds(ticketReceiptSeconds)
        for incident in incidents where incident.isOpen { open[Self.key(incident.host, incident.partID)] = incident }
    }

    /// What every hardware incident's id starts with.
    static let idPrefix = "hw:"

    static func key(_ host: String, _ part: String) -> String { "\(host)/\(part)" }

    /// The incident id: `hw:<host>:<hash of the part's Redfish id>:<when opened>`, the same
    /// for every orchestrator that reads it from the journal.
    static func incidentID(host: String, partID: String, openedMs: Int64) -> String {
        "hw:\(host.prefix(120)):\(StableHash.hex(partID)):\(openedMs)"
    }

    @discardableResult
    mutating func handle(_ input: Input, nowMs: Int64) -> Effects {
        now = nowMs
        effects = Effects()
        defer { effects = Effects() }
        switch input {
        case .event(let host, let event):
            seen(host: host, event.finding, severity: event.to, live: true)
        case .state(let host, let state):
            for finding in state.findings { seen(host: host, finding, severity: finding.severity, live: false) }
            guard state.bmcReachable else { break }
            // HW6: open incidents of this host whose part the read no longer lists are healthy.
            let listed = Set(state.findings.filter { $0.severity == .failed || $0.severity == .warning }.map(\.part.id))
            for (key, incident) in open.sorted(by: { $0.key < $1.key }) where incident.host == host && !listed.contains(incident.partID) {
                markHealthy(key, incident, part: nil)
            }
        case .ticket(let event):
            ticket(event)
        case .tick:
            for (key, incident) in open.sorted(by: { $0.key < $1.key }) {
                if let since = incident.healthySinceMs, now - since >= healthyMs {
                    close(key, incident)
                } else if incident.ticket == .failed || incident.ticket == .requested, now - incident.ticketAskedMs >= Self.refileMs {
                    // Could not be filed, or no ticket event came for the OPEN: asked again.
                    var asked = incident
                    asked.ticket = .requested
                    asked.ticketAskedMs = now
                    asked.updatedMs = now
                    save(key, asked)
                    requestTicket(.open, for: asked, comment: "")
                    log(.notice, "hardware ticket asked for again", asked, ["after": incident.ticket == .failed ? "ticketing could not file it" : "no ticket event for the OPEN"])
                }
            }
        }
        return effects
    }

    private mutating func seen(host: String, _ finding: Bynar_V1_HardwarePartFinding, severity: Bynar_V1_HardwareSeverity, live: Bool) {
        let part = finding.part
        guard !host.isEmpty, !part.id.isEmpty else { return }
        let key = Self.key(host, part.id)
        // HW2: a drive the detector tied to one of its disks is the disk workflow's.
        guard finding.diskKey.isEmpty else { return }
        switch severity {
        case .failed:
            if var incident = open[key] {
                guard incident.healthySinceMs != nil || incident.finding != finding else { return }
                let wasHealthy = incident.healthySinceMs != nil
                incident.healthySinceMs = nil
                incident.finding = finding
                incident.updatedMs = now
                save(key, incident)
                if wasHealthy {
                    requestTicket(.comment, for: incident, comment: "The BMC reports \(Self.partName(part)) failed again at \(UTCTime.iso8601(unixMs: now)): \(finding.reason) (\(finding.detail)). Bynar keeps this ticket open.")
                }
                return
            }
            openIncident(host: host, key: key, finding)
        case .warning:
            if var incident = open[key] {
                // Better, not healthy: the incident stays as it is, with what the BMC says now.
                guard incident.finding != finding else { return }
                incident.finding = finding
                incident.updatedMs = now
                save(key, incident)
            } else if live {
                notify(.warning, "Hardware warning on \(host): \(Self.partName(part))",
                       text: "\(finding.rule) \(finding.reason): \(finding.detail)\(Self.serialText(part))",
                       host: host, next: "nothing yet: Bynar opens a hardware incident and a ticket if the part fails", incident: "")
            }
        case .ok:
            if let incident = open[key] { markHealthy(key, incident, part: part) }
        default:
            break
        }
    }

    /// HW1.
    private mutating func openIncident(host: String, key: String, _ finding: Bynar_V1_HardwarePartFinding) {
        let part = finding.part
        var incident = Incident(id: Self.incidentID(host: host, partID: part.id, openedMs: now), host: host, partID: part.id, findingBytes: [],
                                openedMs: now, updatedMs: now, ticketAskedMs: now)
        incident.finding = finding
        save(key, incident)
        requestTicket(.open, for: incident, comment: "")
        log(.notice, "hardware incident opened", incident)
        notify(.error, "Hardware failed on \(host): \(Self.partName(part))",
               text: "\(finding.rule) \(finding.reason): \(finding.detail)\(Self.serialText(part)). Bynar does not act on the server for it; a ticket asks a technician to replace the part.",
               host: host, next: "a technician replaces the part; Bynar closes the incident and the ticket once the BMC reports it healthy", incident: incident.id)
    }

    /// HW4: the part reads healthy; the incident closes once it has for long enough. The
    /// part as it reads now (from its event back to OK) may carry a new serial: replaced.
    private mutating func markHealthy(_ key: String, _ incident: Incident, part: Bynar_V1_HardwarePart?) {
        var healthy = incident
        if healthy.healthySinceMs == nil { healthy.healthySinceMs = now }
        if let part, !part.serial.isEmpty, part.serial != incident.finding.part.serial {
            var finding = incident.finding
            finding.part.serial = part.serial
            healthy.finding = finding
            healthy.closedWhy = "replaced: serial \(incident.finding.part.serial.isEmpty ? "unknown" : incident.finding.part.serial) is now \(part.serial)"
        }
        guard healthy != incident else { return }
        healthy.updatedMs = now
        save(key, healthy)
        if healthyMs == 0 { close(key, healthy) }
    }

    private mutating func close(_ key: String, _ incident: Incident) {
        var closed = incident
        closed.closedMs = now
        closed.updatedMs = now
        let since = UTCTime.iso8601(unixMs: incident.healthySinceMs ?? now)
        let part = Self.partName(incident.finding.part)
        closed.closedWhy = "the BMC reports \(part) healthy since \(since)" + (incident.closedWhy.isEmpty ? "" : " (\(incident.closedWhy))")
        open[key] = nil
        effects.changed.append(closed)
        requestTicket(.close, for: closed, comment: "Closed by Bynar: \(closed.closedWhy).")
        log(.notice, "hardware incident closed", closed)
        notify(.info, "Hardware repaired on \(incident.host): \(part)", text: closed.closedWhy + ".", host: incident.host, next: "", incident: incident.id)
    }

    /// HW5.
    private mutating func ticket(_ event: Bynar_V1_TicketEvent) {
        guard event.incidentID.hasPrefix(Self.idPrefix), let found = open.first(where: { $0.value.id == event.incidentID }) else { return }
        let (key, incident) = (found.key, found.value)
        var changed = incident
        switch event.state {
        case .opened:
            guard incident.ticket != .opened || incident.ticketKey != event.ticketKey else { return }
            changed.ticket = .opened
        case .resolved, .closed:
            guard incident.ticket != .resolvedByPerson else { return }
            changed.ticket = .resolvedByPerson
            if incident.healthySinceMs == nil && !incident.toldStillFailed {
                changed.toldStillFailed = true
                let finding = incident.finding
                requestTicket(.comment, for: changed, comment: "The BMC still reports \(Self.partName(finding.part)) failed (\(finding.reason): \(finding.detail)) at \(UTCTime.iso8601(unixMs: now)). Bynar keeps its incident open and closes it once the BMC reports the part healthy.")
            }
        case .failed:
            guard incident.ticket != .failed else { return }
            changed.ticket = .failed
            changed.ticketAskedMs = now
            log(.warning, "hardware ticket could not be filed; asked again in 10 minutes", incident, ["detail": event.detail])
        default:
            return
        }
        if !event.ticketKey.isEmpty { changed.ticketKey = event.ticketKey }
        if !event.url.isEmpty { changed.ticketURL = event.url }
        changed.updatedMs = now
        save(key, changed)
    }

    private mutating func save(_ key: String, _ incident: Incident) {
        open[key] = incident
        effects.changed.removeAll { $0.id == incident.id }
        effects.changed.append(incident)
    }

    private mutating func requestTicket(_ action: Bynar_V1_TicketRequest.Action, for incident: Incident, comment: String) {
        var request = Bynar_V1_TicketRequest()
        request.incidentID = incident.id
        request.action = action
        request.comment = comment
        request.ticketKey = incident.ticketKey
        var hardware = Bynar_V1_HardwareTicket()
        hardware.host = incident.host
        hardware.finding = incident.finding
        hardware.failedUnixMs = incident.openedMs
        request.hardware = hardware
        // As the disk workflow's: an OPEN is confirmed by its ticket event and asked again
        // when none came (``refileMs``; ticketing answers a repeated OPEN with the ticket it
        // has). A comment or close is sent until ticketing answers it, one at a time per
        // incident. (An OPEN sent until answered held them all behind it when its receipt
        // was lost, e.g. the orchestrator killed just after ticketing filed the ticket: they
        // waited for its resend, ticket_receipt_seconds later.)
        let receipt = action == .open ? nil : Outbox.Receipt(from: "ticketing", resendAfter: ticketReceipt)
        effects.messages.append(Outbox.Event(request, to: Topics.ticketCommands, correlationId: incident.id, receipt: receipt))
    }

    private mutating func notify(_ severity: Bynar_V1_Notification.Severity, _ title: String, text: String, host: String, next: String, incident: String) {
        var note = Bynar_V1_Notification()
        note.severity = severity
        note.title = title
        note.text = text
        note.host = host
        note.nextAction = next
        note.incidentID = incident
        effects.messages.append(Outbox.notification(note, correlationId: incident))
    }

    private mutating func log(_ level: Logger.Level, _ message: String, _ incident: Incident, _ extra: [String: String] = [:]) {
        var metadata = ["incident": incident.id, "host": incident.host, "part": incident.partID]
        metadata.merge(extra) { $1 }
        effects.logs.append(.init(level: level, message: message, metadata: metadata))
    }

    /// "power supply PSU 2".
    static func partName(_ part: Bynar_V1_HardwarePart) -> String { "\(part.spokenKind) \(part.place)" }

    static func serialText(_ part: Bynar_V1_HardwarePart) -> String {
        let bits = [part.model.isEmpty ? nil : "model \(part.model)", part.serial.isEmpty ? nil : "serial \(part.serial)"].compactMap { $0 }
        return bits.isEmpty ? "" : " (\(bits.joined(separator: ", ")))"
    }
}
