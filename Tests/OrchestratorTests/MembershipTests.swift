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

    /// Applications: UP or DOWN after anything else is a transition; UNKNOWN and STOPPED are
    /// none; a detector's crash takes its host's UP apps DOWN, a clean shutdown does not.
    @Test func applicationsAndTheirCheckersDeath() {
        var m = Membership()
        _ = m.apply(host: "h1", service: "detector", birth: true, session: 1, atMs: 1)
        #expect(m.apply(host: "h1", app: "web", up: nil, atMs: 2).isEmpty, "unknown: not checked yet")
        #expect(m.apply(host: "h1", app: "web", up: true, atMs: 3) == [.app(host: "h1", app: "web", up: true)])
        #expect(m.apply(host: "h1", app: "web", up: true, atMs: 4).isEmpty, "a repeat")
        #expect(m.apply(host: "h1", app: "db", up: false, atMs: 5) == [.app(host: "h1", app: "db", up: false)])
        #expect(m.apply(host: "h1", app: "web", up: false, atMs: 6) == [.app(host: "h1", app: "web", up: false)])
        #expect(m.apply(host: "h1", app: "web", up: true, atMs: 7) == [.app(host: "h1", app: "web", up: true)])
        // A crash (no clean shutdown): the UP app goes DOWN with the host's checker; db was down.
        #expect(m.apply(host: "h1", service: "detector", birth: false, session: 1, atMs: 8) == [
            .service(host: "h1", service: "detector", up: false), .app(host: "h1", app: "web", up: false), .host(host: "h1", up: false)])
        _ = m.apply(host: "h1", service: "detector", birth: true, session: 2, atMs: 9)
        #expect(m.apply(host: "h1", app: "web", up: true, atMs: 10) == [.app(host: "h1", app: "web", up: true)])
        // A nice quit: STOPPED first (no transition), then a clean death takes nothing down.
        #expect(m.apply(host: "h1", app: "web", up: nil, atMs: 11).isEmpty)
        #expect(m.apply(host: "h1", service: "detector", birth: false, session: 2, atMs: 12, clean: true) == [
            .service(host: "h1", service: "detector", up: false), .host(host: "h1", up: false)])
        // And another service's crash is not the checker's.
        _ = m.apply(host: "h2", service: "disk-manager", birth: true, session: 1, atMs: 13)
        _ = m.apply(host: "h2", app: "web", up: true, atMs: 14)
        #expect(!m.apply(host: "h2", service: "disk-manager", birth: false, session: 1, atMs: 15).contains(.app(host: "h2", app: "web", up: false)))
    }
}
