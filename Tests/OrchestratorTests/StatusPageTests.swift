import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

/// The orchestrator's status page (docs/status-page.md), served by the real
/// bynar-orchestrator beside its metrics, with an incident driven over a real broker to
/// TICKETED by the stand-in disk-manager and ticketing. The disk's key and the detector's
/// reason carry markup, which must reach the page as text.
@Suite(.serialized, .enabled(if: TestBroker.available, "mosquitto is not installed (apt-get install mosquitto)"))
struct StatusPageTests {
    static let key = "serial-<script>K1"
    static let reason = "</td><script>alert(\"reason\")</script><img src=x onerror=alert(1)>"

    /// Starts the orchestrator with its metrics (and so its page) on a free port, fails a disk
    /// whose key and reason carry markup, and waits until its incident is TICKETED.
    func withTicketedIncident(_ body: (OrchestratorHarness, Int, String) async throws -> Void) async throws {
        try await withHarness { h in
            let port = try freeLoopbackPort()
            // A hook that fails, so the page has a hook result worth showing.
            let hook = h.directory + "/hook"
            try "#!/bin/sh\nexit 3\n".write(toFile: hook, atomically: true, encoding: .utf8)
            chmod(hook, 0o755)
            try await h.start(orchestrator: "\"hooks\": [{\"command\": \"\(hook)\"}]", topLevel: "\"metrics\": {\"orchestrator_port\": \(port)}")
            var disk = DetectorVoice.identity(host: "h1", key: Self.key)
            disk.devPath = "/dev/sdq"
            try await h.detector.say(disk, from: .failing, to: .failed, detail: Self.reason)
            let id = try await h.waitFor(.ticketed)
            try await body(h, port, id)
            try await h.tap.clearRetained(Topics.diskHealth(host: "h1", disk: Self.key))
        }
    }

    /// GET `path` on the page's port: status and body as text.
    func get(_ port: Int, _ path: String) throws -> (Int, String) {
        let (status, body) = try plainHTTP(port: port, method: "GET", path: path)
        return (status, String(decoding: body, as: UTF8.self))
    }

    /// `/api/status` until `done` says yes (the board fills as statuses and health arrive).
    func status(_ port: Int, until done: ([String: Any]) -> Bool) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let (code, body) = try get(port, "/api/status")
            if code == 200, let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] {
                last = json
                if done(json) { return json }
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        return last
    }

    @Test("GET /api/status and the HTML page show the open incident, its timeline, ticket, brake, disks and hosts; markup from data is escaped")
    func apiAndPageShowTheIncident() async throws {
        try await withTicketedIncident { h, port, id in
            // A disk-manager comes up on stor7: membership, and the hook runs for it.
            let hook = h.directory + "/hook"
            let stor7 = try await connectedBus(h.broker, service: "disk-manager", host: "stor7", announce: true)
            defer { Task { await stor7.shutdown() } }
            await stor7.markReady()
            let json = try await status(port) { json in
                let hosts = (json["hosts"] as? [[String: Any]] ?? []).compactMap { $0["host"] as? String }
                return hosts.contains("orch") && hosts.contains("stor7") && !(json["disks"] as? [Any] ?? []).isEmpty
                    && (json["hooks"] as? [[String: Any]] ?? []).contains { ($0["arguments"] as? [String])?.first == "disk-manager" }
            }
            let hooks = json["hooks"] as? [[String: Any]] ?? []
            let run = hooks.first { ($0["arguments"] as? [String])?.first == "disk-manager" } ?? [:]
            #expect(run["hook"] as? String == hook && run["exit_status"] as? Int == 3 && run["timed_out"] as? Bool == false, "\(hooks)")
            let stor7Host = (json["hosts"] as? [[String: Any]] ?? []).first { $0["host"] as? String == "stor7" }
            #expect(stor7Host?["up"] as? Bool == true, "\(json["hosts"] ?? "")")
            let incidents = json["incidents"] as? [[String: Any]] ?? []
            #expect(incidents.count == 1, "\(json)")
            let incident = incidents.first ?? [:]
            #expect(incident["id"] as? String == id)
            #expect(incident["disk_key"] as? String == Self.key)
            #expect(incident["dev_path"] as? String == "/dev/sdq")
            #expect(incident["state"] as? String == "ticketed")
            #expect(incident["counts_as_out"] as? Bool == true)
            #expect((incident["reasons"] as? [String])?.first == "fs.read_only: \(Self.reason)")
            let ticket = incident["ticket"] as? [String: Any] ?? [:]
            #expect(ticket["key"] as? String == "OPS-1")
            #expect(ticket["url"] as? String == "https://jira.example/browse/OPS-1")
            let timeline = (incident["timeline"] as? [[String: Any]] ?? []).compactMap { $0["state"] as? String }
            #expect(timeline.starts(with: ["opened"]) || timeline.starts(with: ["checkingSafety"]), "\(timeline)")
            for state in ["checkingSafety", "removing", "removed", "ticketed"] {
                #expect(timeline.contains(state), "timeline \(timeline) lacks \(state)")
            }
            #expect((json["tickets"] as? [[String: Any]])?.first?["incident_id"] as? String == id)
            let use = (json["brake"] as? [String: Any])?["use"] as? [[String: Any]] ?? []
            #expect(use.contains { $0["per"] as? String == "cluster" && $0["name"] as? String == "default" && $0["out"] as? Int == 1 && $0["limit"] as? Int == 2 },
                    "\(use)")
            #expect(use.contains { $0["per"] as? String == "host" && $0["name"] as? String == "h1" && $0["out"] as? Int == 1 && $0["limit"] as? Int == 1 })
            let disks = json["disks"] as? [[String: Any]] ?? []
            #expect(disks.contains { $0["key"] as? String == Self.key && $0["state"] as? String == "failed" }, "\(disks)")
            let failed = (json["disk_states"] as? [[String: Any]] ?? []).first { $0["state"] as? String == "failed" }
            #expect(failed?["count"] as? Int == 1)
            let orch = (json["hosts"] as? [[String: Any]] ?? []).first { $0["host"] as? String == "orch" }
            #expect(orch?["up"] as? Bool == true)
            #expect((orch?["services"] as? [[String: Any]])?.contains { $0["service"] as? String == "orchestrator" && $0["up"] as? Bool == true } == true)
            #expect(json["orchestrator_host"] as? String == "orch")

            let (code, page) = try get(port, "/")
            #expect(code == 200)
            #expect(page.contains("serial-&lt;script&gt;K1"), "the key, escaped")
            #expect(page.contains("&lt;/td&gt;&lt;script&gt;alert(&quot;reason&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"), "the reason, escaped")
            #expect(!page.contains("<script>K1") && !page.contains("<script>alert") && !page.contains("<img src=x"), "no markup from data")
            #expect(page.contains("href=\"https://jira.example/browse/OPS-1\">OPS-1</a>"))
            #expect(page.contains("<span class=\"state\">ticketed</span>"))
            #expect(page.contains("Read-only"))
            #expect(page.contains("<td>\(hook)</td><td>disk-manager "), "the hook result")
            #expect(page.contains("<td>stor7</td><td>up</td><td>disk-manager up</td>"))
            #expect(!page.contains("<form") && !page.contains("<button"), "nothing to act with")

            // Read-only, and the metrics are still there on the same port.
            #expect(try plainHTTP(port: port, method: "POST", path: "/api/status", body: "{}").0 == 405)
            #expect(try plainHTTP(port: port, method: "DELETE", path: "/").0 == 405)
            #expect(try get(port, "/nothing-here").0 == 404)
            let metrics = try get(port, "/metrics")
            #expect(metrics.0 == 200 && metrics.1.contains("bynar_orchestrator_incidents{state=\"ticketed\"} 1"), "\(metrics.1.prefix(3000))")
        }
    }

    /// Text of `<main id="status">` in a DOM dump, tags dropped, whitespace squeezed.
    static func mainText(_ dom: String) -> String {
        guard let start = dom.range(of: "<main id=\"status\""), let end = dom.range(of: "</main>", range: start.upperBound..<dom.endIndex) else { return "" }
        var text = String(dom[start.lowerBound..<end.upperBound])
        text = text.replacingOccurrences(of: "<[^>]*>", with: " ", options: .regularExpression)
        return text.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }

    @Test("headless Chromium: the live page (its script polled /api/status) and the page with JavaScript off show the same incident",
          .enabled(if: HeadlessChromium.path != nil, "chromium is not installed (apt-get install chromium; scripts/install-deps has it)"))
    func browserShowsTheIncident() async throws {
        try await withTicketedIncident { h, port, id in
            _ = try await status(port) { json in !(json["disks"] as? [Any] ?? []).isEmpty && !(json["hosts"] as? [Any] ?? []).isEmpty }
            let url = "http://127.0.0.1:\(port)/"
            let live = try HeadlessChromium.dumpDOM(url, javaScript: true, budget: .seconds(5))
            let plain = try HeadlessChromium.dumpDOM(url, javaScript: false)
            for (name, dom) in [("live", live), ("no JavaScript", plain)] {
                #expect(dom.contains("serial-&lt;script&gt;K1"), "\(name): the key, as text")
                #expect(dom.contains(id.replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")), "\(name): the incident id")
                #expect(dom.contains("https://jira.example/browse/OPS-1"), "\(name): the ticket link")
                #expect(!dom.contains("<img"), "\(name): no element made from a reason")
                #expect(!dom.contains("<script>K1") && !dom.contains("<script>alert"), "\(name): no script made from data")
                let text = Self.mainText(dom)
                for fact in ["Open incidents (1)", "ticketed", "checkingSafety", "removing", "removed", "OPS-1", "cluster default 1 2", "failed: 1", "orch"] {
                    #expect(text.contains(fact), "\(name) lacks \(fact): \(text)")
                }
            }
            #expect(live.contains("data-rendered-by=\"script\""), "the script rendered the page from /api/status: \(live.suffix(3000))")
            #expect(live.contains("live (polling /api/status"))
            #expect(plain.contains("data-rendered-by=\"server\"") && plain.contains("server-rendered"))
            #expect(Self.mainText(live) == Self.mainText(plain), "the same facts with and without JavaScript:\nlive:  \(Self.mainText(live))\nplain: \(Self.mainText(plain))")

            // Live: a page loaded while the incident is TICKETED shows it WAITING_FOR_REPLACEMENT
            // once the technician resolves the ticket, without a reload (its script polls).
            let watchLog = NSTemporaryDirectory() + "bynar-status-watch-\(port).log"
            defer { try? FileManager.default.removeItem(atPath: watchLog) }
            let watcher = try HeadlessChromium.watch(url, seconds: 10, outputPath: watchLog)
            defer { watcher.stop(SIGTERM) }
            let loaded = await Collector<Int>.poll(timeout: .seconds(60)) {
                ((try? String(contentsOfFile: watchLog, encoding: .utf8)) ?? "").contains("browser-dom: loaded")
            }
            #expect(loaded, "the page loaded: \((try? String(contentsOfFile: watchLog, encoding: .utf8)) ?? "")")
            let before = try get(port, "/api/status").1
            #expect(before.contains("\"state\":\"ticketed\""), "still TICKETED when the page had loaded")
            await h.tickets.resolve(incident: id)
            try await h.waitFor(.waitingForReplacement)
            #expect(watcher.waitForExit(timeout: .seconds(60)) == 0, "browser-dom ended")
            let watched = (try? String(contentsOfFile: watchLog, encoding: .utf8)) ?? ""
            #expect(watched.contains("<span class=\"state\">waitingForReplacement</span>"), "the page moved on by itself: \(Self.mainText(watched))")
            #expect(watched.contains("data-rendered-by=\"script\""))

            // The docs' screenshot script, on the same page.
            let png = NSTemporaryDirectory() + "bynar-status-page-\(port).png"
            defer { try? FileManager.default.removeItem(atPath: png) }
            let shot = try HeadlessChromium.statusScreenshot(url, to: png)
            #expect(shot.exitCode == 0, "\(shot.output)")
            let bytes = (try? Data(contentsOf: URL(fileURLWithPath: png))) ?? Data()
            #expect(bytes.count > 10_000 && bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]), "a PNG of the page: \(bytes.count) bytes")
        }
    }
}
