import BynarProto
@testable import Orchestrator
import Testing

/// The keeper applies each status once, by message id, whichever stream brings it first.
@Suite struct MembershipKeeperTests {
    static func status(_ host: String, _ service: String, birth: Bool, session: UInt64) -> Bynar_V1_ServiceStatus {
        var status = Bynar_V1_ServiceStatus()
        status.host = host
        status.service = service
        status.state = birth ? .birth : .death
        status.session = session
        status.deathCause = .connectionLost
        return status
    }

    /// A service's will repeats its message id on every lost connection of one run: once
    /// the service is back (a birth), its next death under the same id is a new event, for
    /// that service only; a status seen again before then is not.
    @Test func aWillSeenAgainAfterABirthIsANewDeath() async {
        let keeper = MembershipKeeper()
        _ = await keeper.observe(Self.status("h1", "disk-manager", birth: true, session: 1), messageID: "birth-h1", nowMs: 1)
        _ = await keeper.observe(Self.status("h2", "disk-manager", birth: true, session: 1), messageID: "birth-h2", nowMs: 1)
        #expect(await keeper.observe(Self.status("h1", "disk-manager", birth: false, session: 1), messageID: "will-h1", nowMs: 2) == ["h1"])
        #expect(await keeper.observe(Self.status("h2", "disk-manager", birth: false, session: 1), messageID: "will-h2", nowMs: 2) == ["h2"])
        #expect(await keeper.observe(Self.status("h1", "disk-manager", birth: false, session: 1), messageID: "will-h1", nowMs: 3).isEmpty, "the same status again")
        // h1 comes back; h2 does not.
        #expect(await keeper.observe(Self.status("h1", "disk-manager", birth: true, session: 1), messageID: "birth-h1-again", nowMs: 4) == ["h1"])
        #expect(await keeper.observe(Self.status("h1", "disk-manager", birth: false, session: 1), messageID: "will-h1", nowMs: 5) == ["h1"], "down again")
        let claimed = await keeper.claim(Self.status("h2", "disk-manager", birth: false, session: 1), messageID: "will-h2", nowMs: 6)
        #expect(claimed.transitions.contains(.service(host: "h2", service: "disk-manager", up: false)) && !claimed.changedHost,
                "h2's death is still the one applied, claimed once by the hook subscription")
        #expect(await keeper.claim(Self.status("h2", "disk-manager", birth: false, session: 1), messageID: "will-h2", nowMs: 7).transitions.isEmpty)
    }

    /// 10,000 hosts' births, deaths and births again end with the right hosts up. It times
    /// nothing; it is where the quadratic look showed: each birth looked through every
    /// status of the last two minutes, and this took 176 s in a debug build (0.16 s with
    /// the index by host and service).
    @Test func tenThousandHostsComeAndGo() async {
        let keeper = MembershipKeeper()
        for index in 0..<10_000 {
            _ = await keeper.observe(Self.status("h\(index)", "disk-manager", birth: true, session: 1), messageID: "b\(index)", nowMs: 1)
            _ = await keeper.observe(Self.status("h\(index)", "disk-manager", birth: false, session: 1), messageID: "w\(index)", nowMs: 2)
        }
        for index in 0..<10_000 {
            _ = await keeper.observe(Self.status("h\(index)", "disk-manager", birth: true, session: 2), messageID: "b2-\(index)", nowMs: 3)
        }
        #expect(await keeper.observe(Self.status("h9999", "disk-manager", birth: false, session: 2), messageID: "w9999", nowMs: 4) == ["h9999"])
        #expect(await keeper.membership.hosts.values.filter(\.up).count == 9_999)
    }
}
