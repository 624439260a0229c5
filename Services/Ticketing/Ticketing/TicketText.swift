import BynarConfig
public import BynarProto

/// What a ticket says: written for the technician who walks to the rack.
public enum TicketText {
    /// The label that marks every ticket of one incident: `bynar-incident-<id>`, with
    /// characters JIRA labels cannot hold (spaces and the like) replaced by `_`.
    public static func incidentLabel(_ incidentID: String) -> String {
        let safe = incidentID.unicodeScalars.map { scalar -> Character in
            let allowed = (scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar))) || "-_.:".unicodeScalars.contains(scalar)
            return allowed ? Character(scalar) : "_"
        }
        return "bynar-incident-" + String(safe)
    }

    /// One line naming host and disk: "Replace failed disk on storage-07: slot pci-0000:3b:00.0-sas-phy4 (ST4000NM0033 serial Z1Z3ABCD)".
    public static func summary(_ health: Bynar_V1_DiskHealth) -> String {
        let disk = health.disk
        let host = disk.host.isEmpty ? "unknown host" : disk.host
        var what: [String] = []
        if !disk.model.isEmpty { what.append(disk.model) }
        if !disk.serial.isEmpty { what.append("serial \(disk.serial)") }
        let place = !disk.byPath.isEmpty ? "slot \(disk.byPath)" : (!disk.devPath.isEmpty ? disk.devPath : (disk.key.isEmpty ? "unidentified disk" : disk.key))
        let verb = health.state == .missing ? "Missing disk" : (health.state == .failing ? "Failing disk" : "Failed disk")
        let line = oneLine("\(verb) on \(host): \(place)" + (what.isEmpty ? "" : " (\(what.joined(separator: " ")))"))
        // JIRA caps summaries at 255 characters.
        return line.count <= 255 ? line : String(line.prefix(254)) + "…"
    }

    /// Everything a technician needs, in JIRA wiki markup (plain enough for any backend).
    public static func description(incidentID: String, health: Bynar_V1_DiskHealth) -> String {
        let disk = health.disk
        var text = Lines("Bynar found a disk that needs replacing. Bynar takes it out of service before a technician is needed, and puts the new disk into service once it is in the slot.")
        text.section("Where")
        text.row("Host", disk.host)
        text.row("Location", disk.location)
        text.row("Slot (by-path)", disk.byPath)
        text.row("Device", disk.devPath)
        text.section("Which disk")
        text.row("Model", [disk.vendor, disk.model].filter { !$0.isEmpty }.joined(separator: " "))
        text.row("Serial", disk.serial)
        text.row("WWN", disk.wwn)
        text.row("Size", disk.sizeBytes == 0 ? "" : sizeText(disk.sizeBytes))
        text.row("Firmware", disk.firmware)
        if !health.inUseBy.isEmpty { text.row("In use by", health.inUseBy) }
        text.section("Why")
        text.row("Verdict", health.state.readableName)
        if health.reasons.isEmpty { text.add("* (the detector gave no reasons)") }
        for reason in health.reasons {
            text.add("* {{\(wiki(reason.rule))}} (\(reason.severity.readableName)): \(wiki(reason.detail))")
        }
        for finding in health.filesystems {
            text.add("* filesystem \(wiki(finding.mountpoint)) (\(wiki(finding.filesystem))): \(wiki(finding.detail))")
        }
        if health.hasSmart, health.smart.available {
            text.section("SMART")
            text.add(wiki(smartSummary(health.smart)))
        }
        text.add("")
        text.add("Bynar incident {{\(wiki(incidentID))}}. Bynar follows this ticket and closes it once the new disk is in service.")
        return text.joined
    }

    /// A ticket's description as it is written: an introduction, then sections of rows.
    struct Lines {
        private var lines: [String]
        init(_ introduction: String) { lines = [introduction] }
        mutating func section(_ heading: String) { lines += ["", "h3. \(heading)"] }
        /// "* *Name:* value", the value literal text ("unknown" when empty).
        mutating func row(_ name: String, _ value: String) { lines.append("* *\(name):* \(value.isEmpty ? "unknown" : TicketText.wiki(value))") }
        mutating func add(_ line: String) { lines.append(line) }
        var joined: String { lines.joined(separator: "\n") }
    }

    /// One line naming host and part: "Failed power supply on storage-07: PSU 2 (PWS-1K22A-1R serial P1K2)".
    public static func summary(_ hardware: Bynar_V1_HardwareTicket) -> String {
        let part = hardware.finding.part
        let host = hardware.host.isEmpty ? "unknown host" : hardware.host
        var what: [String] = []
        if !part.model.isEmpty { what.append(part.model) }
        if !part.serial.isEmpty { what.append("serial \(part.serial)") }
        let verb = hardware.finding.severity == .failed ? "Failed" : "Failing"
        let line = oneLine("\(verb) \(part.spokenKind) on \(host): \(part.place)" + (what.isEmpty ? "" : " (\(what.joined(separator: " ")))"))
        return line.count <= 255 ? line : String(line.prefix(254)) + "…"
    }

    /// What a technician needs to find and replace a failed server part.
    public static func description(incidentID: String, hardware: Bynar_V1_HardwareTicket) -> String {
        let finding = hardware.finding
        let part = finding.part
        var text = Lines("The server's BMC reports a failed part. Bynar takes no action on the server for it: a technician replaces the part. Bynar closes this ticket once the BMC reports the part healthy again.")
        text.section("Where")
        text.row("Host", hardware.host)
        text.row("Location", part.location)
        text.section("Which part")
        text.row("Kind", part.spokenKind)
        text.row("Name", part.name)
        text.row("Model", part.model)
        text.row("Serial", part.serial)
        text.row("Redfish resource", part.id)
        text.section("Why")
        text.row("Verdict", finding.severity == .failed ? "failed" : finding.severity == .warning ? "warning" : "unknown")
        text.add("* {{\(wiki(finding.rule))}} {{\(wiki(finding.reason))}}: \(wiki(finding.detail))")
        if hardware.failedUnixMs > 0 { text.row("Failed since", UTCTime.iso8601(unixMs: hardware.failedUnixMs)) }
        text.add("")
        text.add("Bynar incident {{\(wiki(incidentID))}}.")
        return text.joined
    }

    /// `text` as literal text in JIRA wiki markup: on one line (a value from a disk or a
    /// detector must not start a line of its own, where `h1.`, `bq.` or `----` would be
    /// markup), without control characters, and with a backslash before every character the
    /// notation could read as markup: always `! | [ ] { } \\` (images, tables, links, macros,
    /// escapes), and `* _ ? - + ^ ~ #` (bold, emphasis, citation, strike-through, insert,
    /// super/subscript, numbering) unless between two letters or digits, where they are
    /// plain (`storage-07`, `overall_failing` stay as they are). A forged serial like
    /// `X]|[click|http://evil]{code}` shows as itself: no link, no table, no macro.
    public static func wiki(_ text: String) -> String {
        let characters = Array(oneLine(text))
        func word(_ index: Int) -> Bool {
            guard characters.indices.contains(index), let ascii = characters[index].asciiValue else { return false }
            return (ascii >= 48 && ascii <= 57) || (ascii >= 65 && ascii <= 90) || (ascii >= 97 && ascii <= 122)
        }
        var out = ""
        for (index, character) in characters.enumerated() {
            if "!|[]{}\\".contains(character) || ("*_?-+^~#".contains(character) && !(word(index - 1) && word(index + 1))) {
                out.append("\\")
            }
            out.append(character)
        }
        return out
    }

    /// `text` on one line: line breaks and other control characters become spaces.
    static func oneLine(_ text: String) -> String {
        String(text.unicodeScalars.map { scalar -> Character in
            scalar.value < 0x20 || scalar.value == 0x7F || scalar.properties.generalCategory == .lineSeparator || scalar.properties.generalCategory == .paragraphSeparator
                ? " " : Character(scalar)
        })
    }

    static func smartSummary(_ smart: Bynar_V1_SmartSummary) -> String {
        var parts = ["overall \(smart.overallPassed ? "passed" : "FAILED")" + (smart.overall.isEmpty ? "" : " (\(smart.overall))")]
        let counts: [(String, UInt64)] = [
            ("reallocated", smart.reallocated), ("pending", smart.pending), ("offline uncorrectable", smart.offlineUncorrectable),
            ("reported uncorrectable", smart.reportedUncorrectable), ("bad sectors", smart.badSectors), ("command timeouts", smart.commandTimeouts),
            ("NVMe media errors", smart.nvmeMediaErrors),
        ]
        parts += counts.filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }
        if smart.nvmeCriticalWarning != 0 { parts.append("NVMe critical warning 0x\(String(smart.nvmeCriticalWarning, radix: 16))") }
        if smart.temperatureC >= 0 { parts.append("\(smart.temperatureC) °C") }
        if smart.powerOnHours > 0 { parts.append("\(smart.powerOnHours) power-on hours") }
        let failing = smart.attributes.filter(\.failingNow).map { "\($0.id) \($0.name)" }
        if !failing.isEmpty { parts.append("failing attributes: " + failing.joined(separator: ", ")) }
        return parts.joined(separator: "; ")
    }

    /// Decimal units, as disk labels print them ("4.0 TB").
    static func sizeText(_ bytes: UInt64) -> String {
        let units = ["B", "kB", "MB", "GB", "TB", "PB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1000 && unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit]) (\(bytes) bytes)"
    }
}
