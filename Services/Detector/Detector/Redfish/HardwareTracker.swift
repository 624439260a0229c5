import BynarProto

/// The detector's pure core for hardware findings: given each read of the BMC (or its
/// failure), says what to publish. Rules:
///
/// - T1 A part whose severity changed since the last good read (a new finding, a changed
///   one, or one gone: `to` OK, with the part's serial and model as read now) gives one
///   ``HardwareEvent``; an unchanged part gives none.
/// - T2 The retained ``HardwareState`` is published when the findings, the drive matches,
///   the reachability or the error changed, not on every read.
/// - T3 A failed read keeps the last good findings (a BMC that does not answer is no
///   proof the parts are healthy again): the state says unreachable and why; no events.
/// - T4 A drive matched to a disk this detector watches carries its disk key: it goes
///   through the disk workflow, not a hardware incident (docs/hardware.md).
///
/// After a restart the first read announces every current finding again (from
/// UNSPECIFIED): events are at-least-once, as every Bynar event is.
struct HardwareTracker: Sendable {
    private(set) var findings: [String: Bynar_V1_HardwarePartFinding] = [:]
    private(set) var state = Bynar_V1_HardwareState()
    private var published = false

    enum Output: Equatable {
        case event(Bynar_V1_HardwareEvent)
        case state(Bynar_V1_HardwareState)
    }

    /// A good read: its findings, each drive's disk key (by part id) when it is a managed disk,
    /// and every part read (by id): a part whose finding is gone is reported back to OK as it
    /// reads now (a swapped part's new serial tells the technician's work from a recovery).
    mutating func read(_ found: [HardwareFinding], partsRead: Int, gaps: [String], diskKeys: [String: String], parts: [String: HardwarePart] = [:],
                       nowMs: Int64) -> [Output] {
        var next: [String: Bynar_V1_HardwarePartFinding] = [:]
        for finding in found {
            next[finding.part.id] = Self.message(finding, diskKey: diskKeys[finding.part.id] ?? "")
        }
        var outputs: [Output] = []
        for id in Set(findings.keys).union(next.keys).sorted() {
            let before = findings[id]
            let after = next[id]
            if before == after { continue }
            var event = Bynar_V1_HardwareEvent()
            event.finding = after ?? before!
            if after == nil, let now = parts[id] {
                event.finding.part.serial = now.serial ?? ""
                event.finding.part.model = now.model ?? ""
            }
            event.from = before?.severity ?? (published ? .ok : .unspecified)
            event.to = after?.severity ?? .ok
            event.atUnixMs = nowMs
            if event.from == event.to && before?.detail == after?.detail && before?.diskKey == after?.diskKey { continue }
            outputs.append(.event(event))
        }
        findings = next
        var newState = Bynar_V1_HardwareState()
        newState.bmcReachable = true
        newState.partsRead = Int32(partsRead)
        newState.findings = next.keys.sorted().map { next[$0]! }
        newState.gaps = gaps
        return outputs + publish(newState, nowMs: nowMs)
    }

    /// A read that failed: `error` names the URL and status.
    mutating func failed(_ error: String, nowMs: Int64) -> [Output] {
        var newState = state
        newState.bmcReachable = false
        newState.error = error
        return publish(newState, nowMs: nowMs)
    }

    private mutating func publish(_ newState: Bynar_V1_HardwareState, nowMs: Int64) -> [Output] {
        var compared = state
        compared.readUnixMs = newState.readUnixMs
        if published && compared == newState { return [] }
        state = newState
        state.readUnixMs = nowMs
        published = true
        return [.state(state)]
    }

    static func message(_ finding: HardwareFinding, diskKey: String) -> Bynar_V1_HardwarePartFinding {
        var part = Bynar_V1_HardwarePart()
        part.kind = finding.part.kind.rawValue
        part.id = finding.part.id
        part.name = finding.part.name
        part.location = finding.part.location ?? ""
        part.serial = finding.part.serial ?? ""
        part.model = finding.part.model ?? ""
        var message = Bynar_V1_HardwarePartFinding()
        message.part = part
        message.severity = finding.severity == .failed ? .failed : .warning
        message.rule = finding.rule
        message.reason = finding.reason
        message.detail = finding.detail
        message.diskKey = diskKey
        return message
    }
}
