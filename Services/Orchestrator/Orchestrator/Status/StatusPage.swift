import BynarConfig
import BynarRuntime
import BynarBus
import GRDB
import Logging
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The orchestrator's status page, read-only, beside its metrics (`metrics.address`, the
/// orchestrator's port; docs/status-page.md):
///
/// - `GET /` (and `/status`): a plain server-rendered HTML page (works with JavaScript off,
///   and then reloads itself every 10 s) whose script polls the JSON API every 2 s and
///   renders the same sections from it.
/// - `GET /api/status`: ``StatusSnapshot`` as JSON.
///
/// Every request is answered on the metrics endpoint's own thread: the board is copied under
/// its lock and the journal read on a read-only SQLite connection of the page's own (WAL),
/// so the decision loop never waits for a reader. Nothing here changes anything: there is no
/// action to take, and every text that came from data is escaped (HTML) or set as text (the
/// script), a ticket link only when it is http(s).
enum StatusPage {
    /// Serves the page and its API on `routes`.
    static func serve(on routes: HTTPRoutes, board: StatusBoard, database: DatabaseQueue, config: OrchestratorConfig, host: String, logger: Logger) {
        let snapshot: @Sendable () throws -> StatusSnapshot = {
            let (incidents, timelines, bucket, hardware) = try database.read { db in
                let incidents = try IncidentJournal.openIncidents(db)
                return (incidents, try IncidentJournal.timelines(db, of: incidents.map(\.id)), try IncidentJournal.bucket(db),
                        try IncidentJournal.openHardwareIncidents(db))
            }
            return StatusSnapshot.make(board: board.copy, incidents: incidents, timelines: timelines, bucket: bucket, config: config,
                                       host: host, version: bynarVersion, nowMs: Bus.nowUnixMs(), hardware: hardware)
        }
        let failed: @Sendable (any Error) -> HTTPRoutes.Reply = { error in
            logger.warning("cannot read the journal for the status page", metadata: ["error": "\(error)"])
            return HTTPRoutes.Reply(status: 503, contentType: "text/plain; charset=utf-8", body: Array("cannot read the orchestrator's journal: \(error)\n".utf8))
        }
        let page: HTTPRoutes.Handler = { _ in
            do {
                return HTTPRoutes.Reply(contentType: "text/html; charset=utf-8", body: Array(html(try snapshot()).utf8))
            } catch { return failed(error) }
        }
        routes.add("/", page)
        routes.add("/status", page)
        routes.add("/api/status") { _ in
            do {
                return HTTPRoutes.Reply(contentType: "application/json", body: Array(try json(try snapshot())))
            } catch { return failed(error) }
        }
    }

    static func json(_ snapshot: StatusSnapshot) throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(snapshot)
    }

    // MARK: HTML

    /// `text` safe inside an element or a quoted attribute.
    static func escape(_ text: String) -> String {
        var result = ""
        result.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            case "'": result += "&#39;"
            default: result.append(character)
            }
        }
        return result
    }

    /// As JavaScript writes a number: 6, 0.5.
    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
    }

    static func time(_ unixMs: Int64) -> String { unixMs > 0 ? UTCTime.iso8601(unixMs: unixMs) : "" }

    /// A ticket: a link when its URL is http(s), its key alone otherwise.
    static func ticketLink(_ ticket: StatusSnapshot.Ticket) -> String {
        let lower = ticket.url.lowercased()
        guard lower.hasPrefix("https://") || lower.hasPrefix("http://") else { return escape(ticket.key) }
        return "<a class=\"ticket\" href=\"\(escape(ticket.url))\">\(escape(ticket.key))</a>"
    }

    static func table(_ headings: [String], _ rows: [[String]]) -> String {
        "<table><thead><tr>" + headings.map { "<th>\($0)</th>" }.joined() + "</tr></thead><tbody>"
            + rows.map { "<tr>" + $0.map { "<td>\($0)</td>" }.joined() + "</tr>" }.joined() + "</tbody></table>"
    }

    /// The whole page; the script (``script``) renders `<main>` again from the API in the
    /// same shape, so both show the same facts.
    static func html(_ status: StatusSnapshot) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Bynar status: \(escape(status.orchestratorHost))</title>
        <noscript><meta http-equiv="refresh" content="10"></noscript>
        <style>\(style)</style>
        </head>
        <body>
        <header><h1>Bynar status</h1>
        <p>Orchestrator <b id="orchestrator">\(escape(status.orchestratorHost))</b>, version \(escape(status.version))\(status.dryRun ? ", <b>dry run</b>" : "").
        Read-only: this page takes no action. <span id="mode">server-rendered</span> at <time id="generated">\(time(status.generatedUnixMs))</time>.</p></header>
        \(main(status))
        <script>\(script)</script>
        </body>
        </html>
        """
    }

    static func main(_ status: StatusSnapshot) -> String {
        var html = "<main id=\"status\" data-rendered-by=\"server\">"
        html += "<section id=\"incidents\"><h2>Open incidents (\(status.incidents.count))</h2>"
        if status.incidents.isEmpty { html += "<p class=\"none\">No open incidents.</p>" }
        for incident in status.incidents {
            html += "<article class=\"incident state-\(escape(incident.state))\">"
            html += "<h3><span class=\"disk\">\(escape(incident.diskKey))</span>\(incident.devPath.isEmpty ? "" : " (\(escape(incident.devPath)))") on "
            html += "<span class=\"host\">\(escape(incident.host))</span>: <span class=\"state\">\(escape(incident.state))</span></h3>"
            html += "<p class=\"detail\">\(escape(incident.detail))</p><dl>"
            html += "<dt>Incident</dt><dd>\(escape(incident.id))</dd>"
            html += "<dt>Ticket</dt><dd>\(incident.ticket.map(ticketLink) ?? "none yet")</dd>"
            html += "<dt>Step</dt><dd>\(incident.step.isEmpty ? "none in flight" : "\(escape(incident.step)), attempt \(incident.attempt)")</dd>"
            html += "<dt>Cluster</dt><dd>\(escape(incident.cluster))\(incident.rack.isEmpty ? "" : ", rack \(escape(incident.rack))")\(incident.countsAsOut ? ", counted out" : "")</dd>"
            html += "<dt>Why</dt><dd class=\"reasons\">\(escape(incident.reasons.joined(separator: "; ")))</dd>"
            html += "<dt>Opened</dt><dd>\(time(incident.openedUnixMs))</dd></dl>"
            html += "<ol class=\"timeline\">" + incident.timeline.map { entry in
                "<li><time>\(time(entry.atUnixMs))</time> <span class=\"state\">\(escape(entry.state))</span>\(entry.step.isEmpty ? "" : " [\(escape(entry.step))]"): \(escape(entry.detail))</li>"
            }.joined() + "</ol></article>"
        }
        html += "</section>"

        html += "<section id=\"hardware\"><h2>Hardware incidents (\(status.hardware.count))</h2>"
        html += status.hardware.isEmpty ? "<p class=\"none\">No server part reported failed.</p>"
            : table(["Host", "Part", "Location", "Serial", "Why", "Ticket", "Opened", "Healthy since"], status.hardware.map { part in
                [escape(part.host), escape("\(part.kind) \(part.part)"), escape(part.location), escape(part.serial), escape(part.reason),
                 part.ticket.map(ticketLink) ?? "none yet", time(part.openedUnixMs), part.healthySinceUnixMs.map(time) ?? "failed"]
            })
        html += "</section>"

        html += "<section id=\"tickets\"><h2>Tickets (\(status.tickets.count))</h2>"
        html += status.tickets.isEmpty ? "<p class=\"none\">No tickets.</p>"
            : table(["Ticket", "Incident", "Technician"], status.tickets.map { [ticketLink($0), escape($0.incidentId), $0.resolved ? "resolved" : "open"] })
        html += "</section>"

        let tokens = status.brake.removalTokens.map { "\(($0 * 10).rounded() / 10)" } ?? "full"
        html += "<section id=\"brake\"><h2>Brake</h2>"
        html += "<p>Removals: \(number(status.brake.removalsPerHour)) per hour, burst \(status.brake.removalBurst); tokens left: \(tokens).</p>"
        html += table(["Per", "Name", "Out", "Limit"], status.brake.use.map { [escape($0.per), escape($0.name), "\($0.out)", "\($0.limit)"] })
        html += "</section>"

        html += "<section id=\"disks\"><h2>Disks (\(status.disks.count))</h2><ul class=\"counts\">"
        html += status.diskStates.map { "<li>\(escape($0.state)): <b>\($0.count)</b></li>" }.joined() + "</ul>"
        if !status.disks.isEmpty {
            html += table(["Host", "Disk", "Device", "State", "Why"], status.disks.map {
                [escape($0.host), escape($0.key), escape($0.devPath), escape($0.state), escape($0.reasons.joined(separator: "; "))]
            })
        }
        html += "</section>"

        html += "<section id=\"hosts\"><h2>Hosts (\(status.hosts.count))</h2>"
        html += status.hosts.isEmpty ? "<p class=\"none\">No host seen yet.</p>" : table(["Host", "Up", "Services"], status.hosts.map { host in
            [escape(host.host), host.up ? "up" : "down", host.services.map { "\(escape($0.service)) \($0.up ? "up" : "down")" }.joined(separator: ", ")]
        })
        html += "</section>"

        html += "<section id=\"hooks\"><h2>Hook results (\(status.hooks.count))</h2>"
        html += status.hooks.isEmpty ? "<p class=\"none\">No hook ran since the orchestrator started.</p>" : table(["Started", "Hook", "Arguments", "Exit", "Took"], status.hooks.map { run in
            [time(run.startedUnixMs), escape(run.hook), escape(run.arguments.joined(separator: " ")), run.timedOut ? "timed out" : "\(run.exitStatus)", "\(run.durationMs) ms"]
        })
        html += "</section></main>"
        return html
    }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}h2{border-bottom:1px solid #ccc;margin-top:1.5em}
        table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
        article.incident{border-left:4px solid #c60;padding-left:1em;margin-bottom:1em}article.state-stuck{border-color:#c00}
        dl{display:grid;grid-template-columns:max-content auto;gap:0 1em}dd{margin:0}.none{color:#777}ul.counts li{display:inline;margin-right:1em}
        """

    /// Polls `/api/status` every 2 s and renders `<main>` from it, text through
    /// `textContent` only (never markup from data), in the shape ``main(_:)`` writes.
    static let script = """
        "use strict";
        (function () {
          function el(tag, attrs) {
            var node = document.createElement(tag);
            for (var name in attrs || {}) node.setAttribute(name, attrs[name]);
            for (var i = 2; i < arguments.length; i++) {
              var child = arguments[i];
              if (child === null || child === undefined) continue;
              node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
            }
            return node;
          }
          function time(ms) { return ms > 0 ? new Date(ms).toISOString() : ""; }
          function frag() {
            var f = document.createDocumentFragment();
            for (var i = 0; i < arguments.length; i++) {
              var c = arguments[i];
              if (c !== null && c !== undefined) f.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
            }
            return f;
          }
          function ticketLink(t) {
            return /^https?:\\/\\//i.test(t.url) ? el("a", {"class": "ticket", href: t.url}, t.key) : frag(t.key);
          }
          function table(headings, rows) {
            var head = el("tr");
            headings.forEach(function (h) { head.appendChild(el("th", {}, h)); });
            var body = el("tbody");
            rows.forEach(function (row) {
              var tr = el("tr");
              row.forEach(function (cell) { tr.appendChild(el("td", {}, cell)); });
              body.appendChild(tr);
            });
            return el("table", {}, el("thead", {}, head), body);
          }
          function none(text) { return el("p", {"class": "none"}, text); }
          function render(s) {
            var main = el("main", {id: "status", "data-rendered-by": "script"});
            var incidents = el("section", {id: "incidents"}, el("h2", {}, "Open incidents (" + s.incidents.length + ")"));
            if (s.incidents.length === 0) incidents.appendChild(none("No open incidents."));
            s.incidents.forEach(function (i) {
              var timeline = el("ol", {"class": "timeline"});
              i.timeline.forEach(function (e) {
                timeline.appendChild(el("li", {}, el("time", {}, time(e.at_unix_ms)), " ", el("span", {"class": "state"}, e.state),
                  (e.step ? " [" + e.step + "]" : "") + ": " + e.detail));
              });
              incidents.appendChild(el("article", {"class": "incident state-" + i.state},
                el("h3", {}, el("span", {"class": "disk"}, i.disk_key), (i.dev_path ? " (" + i.dev_path + ")" : "") + " on ",
                  el("span", {"class": "host"}, i.host), ": ", el("span", {"class": "state"}, i.state)),
                el("p", {"class": "detail"}, i.detail),
                el("dl", {},
                  el("dt", {}, "Incident"), el("dd", {}, i.id),
                  el("dt", {}, "Ticket"), el("dd", {}, i.ticket ? ticketLink(i.ticket) : "none yet"),
                  el("dt", {}, "Step"), el("dd", {}, i.step ? i.step + ", attempt " + i.attempt : "none in flight"),
                  el("dt", {}, "Cluster"), el("dd", {}, i.cluster + (i.rack ? ", rack " + i.rack : "") + (i.counts_as_out ? ", counted out" : "")),
                  el("dt", {}, "Why"), el("dd", {"class": "reasons"}, i.reasons.join("; ")),
                  el("dt", {}, "Opened"), el("dd", {}, time(i.opened_unix_ms))),
                timeline));
            });
            main.appendChild(incidents);

            main.appendChild(el("section", {id: "hardware"}, el("h2", {}, "Hardware incidents (" + s.hardware.length + ")"),
              s.hardware.length === 0 ? none("No server part reported failed.") : table(["Host", "Part", "Location", "Serial", "Why", "Ticket", "Opened", "Healthy since"], s.hardware.map(function (p) {
                return [p.host, p.kind + " " + p.part, p.location, p.serial, p.reason, p.ticket ? ticketLink(p.ticket) : "none yet", time(p.opened_unix_ms),
                  p.healthy_since_unix_ms === null || p.healthy_since_unix_ms === undefined ? "failed" : time(p.healthy_since_unix_ms)];
              }))));

            main.appendChild(el("section", {id: "tickets"}, el("h2", {}, "Tickets (" + s.tickets.length + ")"),
              s.tickets.length === 0 ? none("No tickets.") : table(["Ticket", "Incident", "Technician"], s.tickets.map(function (t) {
                return [ticketLink(t), t.incident_id, t.resolved ? "resolved" : "open"];
              }))));

            var b = s.brake;
            var tokens = b.removal_tokens === null || b.removal_tokens === undefined ? "full" : b.removal_tokens.toFixed(1);
            main.appendChild(el("section", {id: "brake"}, el("h2", {}, "Brake"),
              el("p", {}, "Removals: " + b.removals_per_hour + " per hour, burst " + b.removal_burst + "; tokens left: " + tokens + "."),
              table(["Per", "Name", "Out", "Limit"], b.use.map(function (u) { return [u.per, u.name, String(u.out), String(u.limit)]; }))));

            var counts = el("ul", {"class": "counts"});
            s.disk_states.forEach(function (c) { counts.appendChild(el("li", {}, c.state + ": ", el("b", {}, String(c.count)))); });
            var disks = el("section", {id: "disks"}, el("h2", {}, "Disks (" + s.disks.length + ")"), counts);
            if (s.disks.length > 0) disks.appendChild(table(["Host", "Disk", "Device", "State", "Why"], s.disks.map(function (d) {
              return [d.host, d.key, d.dev_path, d.state, d.reasons.join("; ")];
            })));
            main.appendChild(disks);

            main.appendChild(el("section", {id: "hosts"}, el("h2", {}, "Hosts (" + s.hosts.length + ")"),
              s.hosts.length === 0 ? none("No host seen yet.") : table(["Host", "Up", "Services"], s.hosts.map(function (h) {
                return [h.host, h.up ? "up" : "down", h.services.map(function (v) { return v.service + " " + (v.up ? "up" : "down"); }).join(", ")];
              }))));

            main.appendChild(el("section", {id: "hooks"}, el("h2", {}, "Hook results (" + s.hooks.length + ")"),
              s.hooks.length === 0 ? none("No hook ran since the orchestrator started.") : table(["Started", "Hook", "Arguments", "Exit", "Took"], s.hooks.map(function (r) {
                return [time(r.started_unix_ms), r.hook, r.arguments.join(" "), r.timed_out ? "timed out" : String(r.exit_status), r.duration_ms + " ms"];
              }))));

            document.getElementById("status").replaceWith(main);
            document.getElementById("generated").textContent = time(s.generated_unix_ms);
            document.getElementById("mode").textContent = "live (polling /api/status every 2 s), updated";
          }
          function poll() {
            fetch("/api/status", {cache: "no-store"})
              .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
              .then(render)
              .catch(function (e) { document.getElementById("mode").textContent = "not updating (" + e.message + "), last"; })
              .then(function () { setTimeout(poll, 2000); });
          }
          poll();
        })();
        """
}
