#!/usr/bin/python3
"""Stand-in for Slack's incoming webhooks (no real Slack can run in a test).

Follows Slack's documented webhook behaviour: POST JSON to /services/...; the answer is
plain text, "ok" with 200, or an error code: 400 invalid_payload / no_text, 403
action_prohibited, 404 no_service / channel_not_found, 410 channel_is_archived, 429 with
Retry-After (rate limited), 500.

Control endpoints for tests:
  POST /_control/next   {"responses": [{"status": 429, "body": "rate_limited",
                         "retry_after": "2"}, ...]}   answers the next webhook posts so
  GET  /_control/received                  every webhook post so far, as JSON:
       [{"at": unix seconds, "status": answered, "payload": {...} or null, "raw": "..."}]
  POST /_control/reset                     forget posts and queued answers

Usage: slack_standin.py PORT_FILE  (binds 127.0.0.1 on a free port and writes it to PORT_FILE)
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
received = []
scripted = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body, headers=None, content_type="text/html"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        if self.path == "/_control/received":
            with lock:
                text = json.dumps(received)
            self.answer(200, text, content_type="application/json")
        else:
            self.answer(404, "not_found")

    def do_POST(self):
        raw = self.body()
        if self.path == "/_control/next":
            with lock:
                scripted.extend(json.loads(raw or b"{}").get("responses", []))
            self.answer(200, "ok")
            return
        if self.path == "/_control/reset":
            with lock:
                received.clear()
                scripted.clear()
            self.answer(200, "ok")
            return
        if not self.path.startswith("/services/"):
            self.answer(404, "no_service")
            return
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        with lock:
            step = scripted.pop(0) if scripted else None
        if step is not None:
            status, text = step.get("status", 200), step.get("body", "ok")
            headers = {"Retry-After": str(step["retry_after"])} if "retry_after" in step else {}
        elif not isinstance(payload, dict):
            status, text, headers = 400, "invalid_payload", {}
        elif not payload.get("text") and not payload.get("blocks") and not payload.get("attachments"):
            status, text, headers = 400, "no_text", {}
        else:
            status, text, headers = 200, "ok", {}
        with lock:
            received.append({"at": time.time(), "status": status, "payload": payload,
                             "raw": raw.decode("utf-8", "replace")})
        self.answer(status, text, headers)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(port))
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
