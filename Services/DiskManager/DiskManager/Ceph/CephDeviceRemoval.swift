public import BynarCeph

/// Whether a disk that serves OSDs may be taken out as one OSD, decided from every OSD it
/// serves (``OSDDeviceMatcher``) and their state in the osdmap. Pure: no I/O, tested
/// exhaustively in `CephSharedDeviceTests`.
///
/// Bynar replaces an OSD's **data** disk: it destroys that one OSD (keeping its id) and
/// wipes the disk. A disk that also carries other OSDs, or the BlueStore DB or WAL of any
/// OSD, cannot be handled that way: wiping it kills every OSD whose DB or WAL is on it,
/// and destroying one of them leaves the rest on a disk a technician is about to pull.
/// So such a removal is refused, naming every OSD that depends on the disk, and the
/// operator removes those OSDs first (each through its own data disk). Counting a shared
/// disk as many disks out and removing all its OSDs in one job was the other choice; it is
/// not taken because one failed DB disk would then drain several OSDs at once behind the
/// cluster brake's back, and the OSDs' data disks would still need re-creating with a new
/// DB device, which Bynar does not do.
///
/// Rules, in order:
/// 1. No OSD: refused (the disk serves no OSD any more; nothing to do as Ceph).
/// 2. Every OSD it serves is destroyed: already done (SKIPPED), as the lowest id.
/// 3. It serves more than one live (not destroyed) OSD: refused, naming them all with
///    their roles ("holds the BlueStore DB of osd.1, osd.2, osd.3").
/// 4. It holds the DB or WAL of a live OSD: refused (even of one OSD).
/// 5. Otherwise it is the data disk of exactly one live OSD: that OSD is removed.
public enum CephDeviceRemoval: Equatable, Sendable {
    /// Remove this OSD (its data disk).
    case remove(osd: Int)
    /// Every OSD the disk served is destroyed already.
    case alreadyDestroyed(osd: Int)
    /// Not as one OSD; the reason names every OSD that depends on the disk.
    case refuse(String)

    /// The decision for `device` (its /dev path, for the reason) serving `dependents`,
    /// with `osds` the current osdmap.
    public static func decide(device: String, dependents: [OSDDeviceMatch], osds: [CephOSD]) -> CephDeviceRemoval {
        guard !dependents.isEmpty else { return .refuse("\(device) serves no OSD (no BlueStore label or metadata names it)") }
        let live = liveDependents(dependents, osds: osds)
        guard !live.isEmpty else { return .alreadyDestroyed(osd: dependents.map(\.osd).min()!) }
        if live.count > 1 || live.contains(where: { $0.role != .main }) {
            let those = live.count > 1 ? "those OSDs" : "that OSD"
            return .refuse("\(device) \(describe(live)): remove \(those) first, each through its own data disk "
                + "(Bynar never wipes a disk that still backs a live OSD)")
        }
        return .remove(osd: live[0].osd)
    }

    /// The dependents whose OSD is still in the osdmap and not destroyed, ordered by id.
    /// An OSD the osdmap does not know is not live.
    public static func liveDependents(_ dependents: [OSDDeviceMatch], osds: [CephOSD]) -> [OSDDeviceMatch] {
        let byID = Dictionary(osds.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        return dependents.filter { byID[$0.osd]?.isLive ?? false }.sorted { $0.osd < $1.osd }
    }

    /// "holds the data of osd.0 and the BlueStore DB of osd.1, osd.2".
    public static func describe(_ dependents: [OSDDeviceMatch]) -> String {
        let sorted = dependents.sorted { $0.osd < $1.osd }
        let parts: [String] = [(OSDDeviceMatch.Role.main, "the data"), (.db, "the BlueStore DB"), (.wal, "the BlueStore WAL")].compactMap { role, what in
            let ids = sorted.filter { $0.role == role }.map { "osd.\($0.osd)" }
            return ids.isEmpty ? nil : "\(what) of \(ids.joined(separator: ", "))"
        }
        return "holds " + parts.joined(separator: " and ")
    }
}

/// The id a ``BackendClaim`` of the Ceph backend carries (List's `backend_id`): the OSD id
/// alone ("4") for the data disk of one OSD, which is what Remove answers and Add re-uses;
/// otherwise every OSD the disk serves, by id, with its role ("1:db,2:db,3:db",
/// "0,1:db"). The second form is no OSD id: an Add re-using it is refused, and Remove
/// reads it back only for a disk that is gone (a present disk is always read again).
public enum CephClaimID {
    /// The claim id for a disk serving `dependents` (not empty).
    public static func encode(_ dependents: [OSDDeviceMatch]) -> String {
        let sorted = dependents.sorted { $0.osd < $1.osd }
        if sorted.count == 1, sorted[0].role == .main { return String(sorted[0].osd) }
        return sorted.map { $0.role == .main ? String($0.osd) : "\($0.osd):\($0.role.rawValue)" }.joined(separator: ",")
    }

    /// The dependents a claim id names, or nil when it is not one this backend wrote.
    public static func decode(_ id: String) -> [OSDDeviceMatch]? {
        var dependents: [OSDDeviceMatch] = []
        for item in id.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), let osd = Int(parts[0]), osd >= 0 else { return nil }
            let role: OSDDeviceMatch.Role
            if parts.count == 2 {
                guard let named = OSDDeviceMatch.Role(rawValue: String(parts[1])), named != .main else { return nil }
                role = named
            } else {
                role = .main
            }
            dependents.append(OSDDeviceMatch(osd: osd, role: role, evidence: "claim \(id)"))
        }
        return dependents.isEmpty ? nil : dependents
    }
}
