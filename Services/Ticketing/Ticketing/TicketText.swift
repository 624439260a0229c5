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
        var lines: [String] = []
        lines.append("Bynar found a disk that needs replacing. Bynar takes it out of service before a technician is needed, and puts the new disk into service once it is in the slot.")
        lines.append("")
        lines.append("h3. Where")
        func row(_ name: String, _ value: String) { lines.append("* *\(name):* \(value.isEmpty ? "unknown" : wiki(value))") }
        row("Host", disk.host)
        row("Location", disk.location)
        row("Slot (by-path)", disk.byPath)
        row("Device", disk.devPath)
        lines.append("")
        lines.append("h3. Which disk")
        row("Model", [disk.vendor, disk.model].filter { !$0.isEmpty }.joined(separator: " "))
        row("Serial", disk.serial)
        row("WWN", disk.wwn)
        row("Size", disk.sizeBytes == 0 ? "" : sizeText(disk.sizeBytes))
        row("Firmware", disk.firmware)
        if !health.inUseBy.isEmpty { row("In use by", health.inUseBy) }
        lines.append("")
        lines.append("h3. Why")
        row("Verdict", health.state.readableName)
        if health.reasons.isEmpty { lines.append("* (the detector gave no reasons)") }
        for reason in health.reasons {
            lines.append("* {{\(wiki(reason.rule))}} (\(reason.severity.readableName)): \(wiki(reason.detail))")
        }
        for finding in health.filesystems {
            lines.append("* filesystem \(wiki(finding.mountpoint)) (\(wiki(finding.filesystem))): \(wiki(finding.detail))")
        }
        if health.hasSmart, health.smart.available {
            lines.append("")
            lines.append("h3. SMART")
            lines.append(wiki(smartSummary(health.smart)))
        }
        lines.append("")
        lines.append("Bynar incident {{\(wiki(incidentID))}}. Bynar follows this ticket and closes it once the new disk is in service.")
        return lines.joined(separator: "\n")
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
