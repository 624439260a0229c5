#!/usr/bin/env python3
"""STAND-IN Redfish BMC for Bynar's tests.

sushy-emulator (OpenStack sushy-tools) models systems, storage, drives and thermal, but
not Power (power supplies), Memory members, a SessionService, or any part that is not
healthy. This stand-in serves a DMTF mockup tree (the Redfish-Mockup-Server layout:
DIR/redfish/v1/.../index.json, shapes from DMTF's published mockups and schemas) over
HTTPS, with the Redfish session login (POST /redfish/v1/SessionService/Sessions,
X-Auth-Token) and HTTP basic auth a real BMC offers. Files are read on every request, so
a test changes a part's health by editing its index.json.

Control channel (no auth, loopback only): POST /_standin/expire-sessions forgets every
session (a BMC reset); GET /_standin/requests lists the requests seen as JSON.
"""
import argparse
import base64
import json
import os
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSIONS = "/redfish/v1/SessionService/Sessions"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mockup", required=True, help="directory holding redfish/v1/index.json")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    lock = threading.Lock()
    tokens = {}
    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            print(fmt % a, flush=True)

        def reply(self, status, body=None, headers=()):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message):
            self.reply(status, {"error": {"code": "Base.1.8.GeneralError", "message": message,
                                          "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.GeneralError", "Message": message}]}})

        def auth(self):
            token = self.headers.get("X-Auth-Token")
            if token is not None:
                with lock:
                    return "session" if token in tokens else None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except Exception:
                    return None
                return "basic" if (user, password) == (args.user, args.password) else None
            return None

        def record(self, kind):
            with lock:
                seen.append({"method": self.command, "path": self.path, "auth": kind})

        def body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            if self.path == "/_standin/requests":
                with lock:
                    return self.reply(200, list(seen))
            kind = self.auth()
            self.record(kind)
            path = self.path.split("?")[0].rstrip("/")
            if path != "/redfish/v1" and path != "/redfish" and kind is None:
                return self.error(401, "authentication required")
            if path == SESSIONS:
                with lock:
                    members = [{"@odata.id": location} for location in tokens.values()]
                return self.reply(200, {"@odata.id": SESSIONS, "Name": "Session Collection", "Members": members})
            file = os.path.join(args.mockup, path.lstrip("/"), "index.json")
            if ".." in path or not os.path.isfile(file):
                return self.error(404, "resource %s not found" % path)
            with open(file, "rb") as f:
                return self.reply(200, json.load(f))

        def do_POST(self):
            if self.path == "/_standin/expire-sessions":
                with lock:
                    tokens.clear()
                return self.reply(204)
            body = self.body()
            self.record(None)
            if self.path.rstrip("/") != SESSIONS:
                return self.error(405, "POST is not allowed on %s" % self.path)
            try:
                login = json.loads(body)
            except ValueError:
                return self.error(400, "the body is not JSON")
            if (login.get("UserName"), login.get("Password")) != (args.user, args.password):
                return self.error(401, "invalid user name or password")
            token = secrets.token_hex(16)
            with lock:
                location = "%s/%d" % (SESSIONS, len(seen))
                tokens[token] = location
            self.reply(201, {"@odata.id": location, "Id": location.rsplit("/", 1)[1], "Name": "User Session", "UserName": args.user},
                       headers=[("X-Auth-Token", token), ("Location", location)])

        def do_DELETE(self):
            kind = self.auth()
            self.record(kind)
            if kind is None:
                return self.error(401, "authentication required")
            with lock:
                for token, location in list(tokens.items()):
                    if location == self.path:
                        del tokens[token]
                        return self.reply(204)
            self.error(404, "no session %s" % self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
