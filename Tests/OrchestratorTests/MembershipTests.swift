import Orchestrator
import Testing

/// Membership from births and deaths: stale deaths, repeats, hosts going down and up.
@Suite struct MembershipTests {
    @Test func birthsDeathsAndHosts() {
        var m = Membership()
        #expect(m.apply(host: "h1", service: "detector", birth: true, session: 3, atMs: 10) == [
            .service(host: "h1", service: "detector", up: true), .host(host: "h1", up: true)])
        #expect(m.apply(host: "h1", service: "disk-manager", birth: true, session: 1, atMs: 11) == [
            .service(host: "h1", service: "disk-manager", up: true)])
        #expect(m.apply(host: "h1", service: "detector", birth: true, session: 3, atMs: 12).isEmpty, "a repeated birth is no event")
        #expect(m.apply(host: "h1", service: "detector", birth: false, session: 2, atMs: 13).isEmpty, "a death of an older session is stale")
        #expect(m.apply(host: "h1", service: "detector", birth: false, session: 3, atMs: 14) == [.service(host: "h1", service: "detector", up: false)])
        #expect(m.hosts["h1"]?.up == true, "one service still up: the host is up")
        #expect(m.apply(host: "h1", service: "disk-manager", birth: false, session: 1, atMs: 15) == [
            .service(host: "h1", service: "disk-manager", up: false), .host(host: "h1", up: false)])
        #expect(m.hosts["h1"]?.sinceMs == 15)
        #expect(m.apply(host: "h1", service: "disk-manager", birth: false, session: 1, atMs: 16).isEmpty, "a repeated death is no event")
        #expect(m.apply(host: "h1", service: "detector", birth: true, session: 4, atMs: 17) == [
            .service(host: "h1", service: "detector", up: true), .host(host: "h1", up: true)])
        #expect(m.hosts["h1"]?.services["detector"] == .init(up: true, session: 4, sinceMs: 17))
    }

    @Test func deathOfAnUnknownServiceIsRecordedWithoutEvent() {
        var m = Membership()
        #expect(m.apply(host: "h2", service: "detector", birth: false, session: 5, atMs: 1).isEmpty)
        #expect(m.hosts["h2"]?.up == false)
        #expect(m.apply(host: "h2", service: "detector", birth: true, session: 4, atMs: 2).isEmpty, "an older birth than the death seen is stale")
        #expect(m.apply(host: "h2", service: "detector", birth: true, session: 6, atMs: 3) == [
            .service(host: "h2", service: "detector", up: true), .host(host: "h2", up: true)])
    }
}
