import BynarConfig
import BynarProto
import Foundation
import Testing
@testable import Ticketing

/// The pure parts: ticket text, labels, backoff and follow schedules, HTTP answer parsing.
@Suite struct TicketingUnitTests {
    @Test func incidentLabelsAreValidJiraLabels() {
        #expect(TicketText.incidentLabel("3f2a-77") == "bynar-incident-3f2a-77")
        #expect(TicketText.incidentLabel("a b\"c/d") == "bynar-incident-a_b_c_d")
    }

    @Test func summaryNamesHostAndDiskAndFitsJira() {
        var health = Bynar_V1_DiskHealth()
        health.disk.host = "st-1"
        health.disk.devPath = "/dev/sdb"
        health.state = .failed
        #expect(TicketText.summary(health) == "Failed disk on st-1: /dev/sdb")
        health.disk.model = String(repeating: "M", count: 400)
        #expect(TicketText.summary(health).count == 255)
        var empty = Bynar_V1_DiskHealth()
        empty.state = .missing
        #expect(TicketText.summary(empty) == "Missing disk on unknown host: unidentified disk")
    }

    @Test func descriptionSaysUnknownRatherThanLeavingBlanks() {
        var health = Bynar_V1_DiskHealth()
        health.disk.host = "st-1"
        let text = TicketText.description(incidentID: "i-1", health: health)
        #expect(text.contains("*Location:* unknown") && text.contains("*Serial:* unknown") && text.contains("the detector gave no reasons"))
        #expect(!text.contains("h3. SMART"), "no SMART section without SMART data")
        #expect(TicketText.sizeText(4_000_787_030_016) == "4.0 TB (4000787030016 bytes)")
    }

    @Test("disk data is literal text in the ticket: no links, tables, macros or headings from a forged serial")
    func hostileValuesAreEscaped() {
        var health = Bynar_V1_DiskHealth()
        health.disk.host = "st-1"
        health.disk.serial = "X]|[click|http://evil]{code}"
        health.disk.model = "M\nh1. Pwned\n----"
        var reason = Bynar_V1_HealthReason()
        reason.rule = "smart}}{{x"
        reason.detail = "*bold* _it_ !img.png! {noformat}"
        health.reasons = [reason]
        let text = TicketText.description(incidentID: "i-1", health: health)
        #expect(text.contains(#"*Serial:* X\]\|\[click\|http://evil\]\{code\}"#), "\(text)")
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("h1.") || $0.hasPrefix("----") }, "no line starts with markup: \(text)")
        #expect(text.contains(#"{{smart\}\}\{\{x}}"#) && text.contains(#"\*bold\* \_it\_ \!img.png\! \{noformat\}"#), "\(text)")
        #expect(TicketText.wiki(#"a\b"#) == #"a\\b"#)
        #expect(!TicketText.summary(health).contains("\n"))
    }

    @Test func retryBackoffDoublesToItsCapAndHonoursRetryAfter() {
        var backoff = RetryBackoff(minimumSeconds: 1, maximumSeconds: 5)
        #expect([backoff.failed(), backoff.failed(), backoff.failed(), backoff.failed()] == [.seconds(1), .seconds(2), .seconds(4), .seconds(5)])
        #expect(backoff.failed(retryAfter: .seconds(30)) == .seconds(30), "Retry-After longer than the cap is honoured")
        #expect(backoff.failed(retryAfter: .zero) == .seconds(1), "never sooner than the minimum")
        #expect(backoff.failed(retryAfter: .seconds(86_400)) == .seconds(3600), "a silly Retry-After is capped at an hour")
        backoff.succeeded()
        #expect(backoff.failed() == .seconds(1))
    }

    @Test func followIntervalsGrowByTheFactorUpToTheMaximum() {
        var schedule = TicketingConfig.FollowSchedule()
        schedule.firstCheckSeconds = 300
        schedule.backoffFactor = 2
        schedule.maxIntervalSeconds = 3600
        let plan = FollowPlan(schedule: schedule)
        var interval = plan.firstIntervalSeconds
        var intervals = [interval]
        for _ in 0..<5 {
            interval = plan.intervalAfter(interval)
            intervals.append(interval)
        }
        #expect(intervals == [300, 600, 1200, 2400, 3600, 3600])
    }

    @Test func retryAfterTakesSecondsAndHTTPDates() {
        #expect(HTTPTransport.retryAfter("7") == .seconds(7))
        #expect(HTTPTransport.retryAfter("Sun, 06 Nov 1994 08:49:37 GMT") == .seconds(0), "a date in the past means now")
        let inAMinute = Date().addingTimeInterval(60)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let parsed = HTTPTransport.retryAfter(formatter.string(from: inAMinute))
        #expect(parsed.map { $0 >= .seconds(58) && $0 <= .seconds(60) } == true, "\(String(describing: parsed))")
        #expect(HTTPTransport.retryAfter("soon") == nil)
    }

    @Test func jiraErrorBodiesBecomeOneLine() {
        func reply(_ body: String) -> HTTPTransport.Reply { .init(status: 400, headers: [:], body: Array(body.utf8)) }
        #expect(HTTPTransport.errorText(reply(#"{"errorMessages": ["Bad JQL"], "errors": {"summary": "required", "labels": "no spaces"}}"#)) == "Bad JQL; labels: no spaces; summary: required")
        #expect(HTTPTransport.errorText(reply("<html>Proxy error</html>")) == "<html>Proxy error</html>")
        #expect(HTTPTransport.errorText(reply("")) == "(empty body)")
    }

    @Test func queryValuesArePercentEncoded() {
        #expect(queryEncoded(#"labels = "bynar-incident-a1" ORDER BY key ASC"#) == "labels%20%3D%20%22bynar-incident-a1%22%20ORDER%20BY%20key%20ASC")
    }

    @Test func unusableRequestsAreNamed() {
        var request = Bynar_V1_TicketRequest()
        #expect(TicketEngine.problem(with: request) == "incident_id is empty")
        request.incidentID = "i"
        #expect(TicketEngine.problem(with: request)?.contains("action must be OPEN, COMMENT or CLOSE") == true)
        request.action = .open
        #expect(TicketEngine.problem(with: request) == "OPEN needs health.disk with at least the host (or hardware, for a server part)")
        request.hardware = .with { $0.finding.part.id = "/redfish/v1/Chassis/1U/Power#/PowerSupplies/1" }
        #expect(TicketEngine.problem(with: request) == "OPEN of a hardware ticket needs hardware.host")
        request.hardware = .with { $0.host = "stor1" }
        #expect(TicketEngine.problem(with: request) == "OPEN of a hardware ticket needs hardware.finding.part.id")
        request.hardware.finding.part.id = "/redfish/v1/Chassis/1U/Power#/PowerSupplies/1"
        #expect(TicketEngine.problem(with: request) == nil)
        request.action = .comment
        #expect(TicketEngine.problem(with: request) == "COMMENT needs a comment")
        request.action = .close
        #expect(TicketEngine.problem(with: request) == nil)
    }

    /// A hardware ticket names the part for the technician: kind, location, model, serial,
    /// the BMC's reason; the BMC's text is literal wiki text like a disk's.
    @Test func hardwareTicketsNameThePartItsLocationAndSerial() {
        let hardware = Bynar_V1_HardwareTicket.with {
            $0.host = "storage-07"
            $0.failedUnixMs = 1_700_000_000_000
            $0.finding = .with {
                $0.part = .with {
                    $0.kind = "power_supply"; $0.id = "/redfish/v1/Chassis/1U/Power#/PowerSupplies/1"; $0.name = "Power Supply Bay 2"
                    $0.location = "PSU 2"; $0.serial = "1Z00002"; $0.model = "499253-B21"
                }
                $0.severity = .failed; $0.rule = "R2"; $0.reason = "redfish.power_supply_failed"
                $0.detail = "reports health Critical [click|http://evil]"
            }
        }
        #expect(TicketText.summary(hardware) == "Failed power supply on storage-07: PSU 2 (499253-B21 serial 1Z00002)")
        let text = TicketText.description(incidentID: "hw:storage-07:1:2", hardware: hardware)
        for line in ["* *Host:* storage-07", "* *Location:* PSU 2", "* *Kind:* power supply", "* *Serial:* 1Z00002", "* *Model:* 499253-B21",
                     "{{R2}} {{redfish.power_supply_failed}}: reports health Critical \\[click\\|http://evil\\]", "* *Failed since:* 2023-11-14T22:13:20"] {
            #expect(text.contains(line), "\(line) in\n\(text)")
        }
        var noLocation = hardware
        noLocation.finding.part.location = ""
        noLocation.finding.part.model = ""
        #expect(TicketText.summary(noLocation) == "Failed power supply on storage-07: Power Supply Bay 2 (serial 1Z00002)")
    }
}
