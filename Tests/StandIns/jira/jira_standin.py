#!/usr/bin/python3
"""A STAND-IN for Atlassian JIRA's REST API v2, for Bynar's ticketing tests and benchmark.

No real JIRA can run on a test machine, so this server answers the requests bynar-ticketing
makes the way Atlassian documents them (developer.atlassian.com, "JIRA REST API v2"):

  POST   /rest/api/2/issue                        201 {"id","key","self"} | 400 {"errorMessages","errors"}
  GET    /rest/api/2/search?jql=labels="x"         200 {"startAt","maxResults","total","issues":[...]}
  GET    /rest/api/2/issue/{idOrKey}?fields=...    200 {"id","key","self","fields":{status,resolution,...}} | 404
  POST   /rest/api/2/issue/{idOrKey}/comment       201 {"id","body","self","created"}
  GET    /rest/api/2/issue/{idOrKey}/transitions   200 {"expand","transitions":[{"id","name","to":{status}}]}
  POST   /rest/api/2/issue/{idOrKey}/transitions   204 | 400
  DELETE /rest/api/2/issue/{idOrKey}               204 | 403

Every /rest/ request needs the configured credentials (HTTP basic user:token, or a bearer
personal access token), else 401 with JIRA's "You are not authenticated" body. Only the JQL
bynar-ticketing uses is understood (labels = "..." [AND statusCategory != Done] [ORDER BY ...]);
anything else is a 400 as JIRA answers a JQL error.

It also serves POST /hooks/tickets: a receiver for bynar-ticketing's generic webhook backend
(not a JIRA API; the contract is docs/ticketing.md's). It keeps every body and answers an
"open" with {"key": "HOOK-<n>", "url": ...}; GET /_standin/webhooks lists what arrived.

Tests steer it through /_standin/... (never authenticated, never faulted):

  POST /_standin/fail        {"count":N,"status":500,"retry_after":"2","body":{...}}  next N /rest/ requests fail
  POST /_standin/down        {"down":true}   /rest/ connections are closed without an answer
  POST /_standin/create-delay {"seconds":S} store each created issue, then wait S s before answering
  POST /_standin/index-lag   {"seconds":S}   searches do not see issues created less than S s ago
                                             (JIRA indexes asynchronously; a search right after a
                                             create may miss it)
  POST /_standin/resolve     {"key":"BYN-1"} the issue moves to Done with resolution Fixed
  POST /_standin/forbid-delete {"forbid":true} DELETE answers 403 (no "Delete issues" permission)
  GET  /_standin/issues      every issue ever created (deleted ones flagged), with comments
  GET  /_standin/requests    every /rest/ request: method, path, authorization, via, answer status
                             (0 while unanswered, or when the connection was closed unanswered)
  POST /_standin/reset       forget faults (not issues)

Usage: jira_standin.py --port-file FILE [--port P] [--project KEY] (--user U --token T | --bearer PAT)
The chosen port is written to FILE once the server listens. Stop it with SIGTERM.
"""

import argparse
import base64
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STATUS_TODO = {"name": "To Do", "id": "10000", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}}
STATUS_PROGRESS = {"name": "In Progress", "id": "3", "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"}}
STATUS_DONE = {"name": "Done", "id": "10001", "statusCategory": {"id": 3, "key": "done", "name": "Done"}}
TRANSITIONS = [
    {"id": "11", "name": "To Do", "to": STATUS_TODO},
    {"id": "21", "name": "In Progress", "to": STATUS_PROGRESS},
    {"id": "31", "name": "Done", "to": STATUS_DONE},
]
ISSUE_TYPES = {"1", "3", "10001"}
PRIORITIES = {"1", "2", "3", "4", "5"}


class State:
    def __init__(self, project):
        self.lock = threading.Lock()
        self.project = project
        self.issues = []  # in creation order
        self.next_id = 10000
        self.requests = []
        self.webhooks = []
        self.fail = []  # queued faults: dicts with status, retry_after, body
        self.down = False
        self.create_delay = 0.0
        self.index_lag = 0.0
        self.forbid_delete = False

    def find(self, id_or_key):
        for issue in self.issues:
            if not issue["deleted"] and (issue["key"] == id_or_key or issue["id"] == id_or_key):
                return issue
        return None


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "JiraStandIn/1.0"

    def log_message(self, format, *args):  # quiet; the request log is at /_standin/requests
        pass

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def state(self):
        return self.server.state

    def body_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        return json.loads(raw)

    def send(self, status, payload=None, headers=None):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.answered = status

    def base(self):
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_address[1]
        return "http://" + host

    def issue_view(self, issue, fields=None):
        view = {"id": issue["id"], "key": issue["key"], "self": self.base() + "/rest/api/2/issue/" + issue["id"]}
        all_fields = dict(issue["fields"])
        all_fields["status"] = issue["status"]
        all_fields["resolution"] = issue["resolution"]
        all_fields["created"] = issue["created"]
        if fields:
            all_fields = {k: v for k, v in all_fields.items() if k in fields}
        view["fields"] = all_fields
        return view

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method):
        url = urlparse(self.path)
        if url.path.startswith("/_standin/"):
            return self.control(method, url)
        self.answered = 0
        record = {
            "method": method, "path": self.path,
            "authorization": self.headers.get("Authorization") or "",
            "via": self.headers.get("Via") or "",
            "time": time.time(),
        }
        # Logged on arrival (a create held back by create-delay is visible at once); the
        # status is filled in when the answer goes out.
        record["status"] = 0
        with self.state.lock:
            self.state.requests.append(record)
        try:
            self.rest(method, url)
        finally:
            with self.state.lock:
                record["status"] = self.answered

    def rest(self, method, url):
        state = self.state
        with state.lock:
            down = state.down
            fault = state.fail.pop(0) if state.fail else None
        if down:
            # As a JIRA that went away: the connection closes without an answer.
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault:
            headers = {}
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            body = fault.get("body")
            if body is None:
                body = {"errorMessages": ["stand-in fault: HTTP %d" % fault["status"]], "errors": {}}
            self.body_json()  # drain the request body so the connection stays usable
            return self.send(fault["status"], body, headers)
        if not self.authorized():
            self.body_json()
            return self.send(401, {"errorMessages": ["You are not authenticated. Authentication required to perform this operation."], "errors": {}},
                             {"WWW-Authenticate": 'Basic realm="protected-area"'})
        try:
            payload = self.body_json() if method in ("POST", "PUT") else None
        except ValueError as error:
            return self.send(400, {"errorMessages": ["Unexpected character in the request body: %s" % error], "errors": {}})

        path = url.path
        if method == "POST" and path == "/hooks/tickets":
            return self.webhook(payload or {})
        if method == "POST" and path == "/rest/api/2/issue":
            return self.create(payload or {})
        if method == "GET" and path == "/rest/api/2/search":
            return self.search(parse_qs(url.query))
        match = re.fullmatch(r"/rest/api/2/issue/([^/]+)(/comment|/transitions)?", path)
        if match:
            with state.lock:
                issue = state.find(match.group(1))
            if issue is None:
                return self.send(404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})
            what = match.group(2)
            if what is None and method == "GET":
                fields = parse_qs(url.query).get("fields", [""])[0]
                return self.send(200, self.issue_view(issue, [f for f in fields.split(",") if f] or None))
            if what is None and method == "DELETE":
                if state.forbid_delete:
                    return self.send(403, {"errorMessages": ["You do not have permission to delete issues in this project."], "errors": {}})
                with state.lock:
                    issue["deleted"] = True
                return self.send(204)
            if what == "/comment" and method == "POST":
                text = (payload or {}).get("body")
                if not isinstance(text, str) or not text.strip():
                    return self.send(400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}})
                comment = {"id": str(10000 + len(issue["comments"])), "body": text, "created": now_iso()}
                with state.lock:
                    issue["comments"].append(comment)
                comment = dict(comment, self=self.base() + "/rest/api/2/issue/%s/comment/%s" % (issue["id"], comment["id"]))
                return self.send(201, comment)
            if what == "/transitions" and method == "GET":
                return self.send(200, {"expand": "transitions", "transitions": TRANSITIONS})
            if what == "/transitions" and method == "POST":
                wanted = ((payload or {}).get("transition") or {}).get("id")
                chosen = next((t for t in TRANSITIONS if t["id"] == wanted), None)
                if chosen is None:
                    return self.send(400, {"errorMessages": ["Transition id '%s' is not valid for this issue." % wanted], "errors": {}})
                with state.lock:
                    issue["status"] = chosen["to"]
                    issue["resolution"] = {"id": "10000", "name": "Done"} if chosen["to"] is STATUS_DONE else None
                return self.send(204)
        return self.send(404, {"errorMessages": ["null for uri: %s%s" % (self.base(), self.path)], "errors": {}})

    def authorized(self):
        given = self.headers.get("Authorization") or ""
        config = self.server.auth
        if config["bearer"]:
            return given == "Bearer " + config["bearer"]
        expected = "Basic " + base64.b64encode(("%s:%s" % (config["user"], config["token"])).encode()).decode()
        return given == expected

    # -- the JIRA operations ----------------------------------------------------------------

    def create(self, payload):
        fields = payload.get("fields")
        if not isinstance(fields, dict):
            return self.send(400, {"errorMessages": ["Can not deserialize instance of com.atlassian.jira.rest.v2.issue.IssueUpdateBean"], "errors": {}})
        errors = {}
        if ((fields.get("project") or {}).get("key")) != self.state.project:
            errors["project"] = "valid project is required"
        if not (fields.get("summary") or "").strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(fields["summary"]) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        if ((fields.get("issuetype") or {}).get("id")) not in ISSUE_TYPES:
            errors["issuetype"] = "valid issue type is required"
        if "priority" in fields and (fields["priority"] or {}).get("id") not in PRIORITIES:
            errors["priority"] = "The priority selected is invalid."
        for label in fields.get("labels") or []:
            if not isinstance(label, str) or " " in label or not label:
                errors["labels"] = "The label '%s' contains spaces which is invalid." % label
        if errors:
            return self.send(400, {"errorMessages": [], "errors": errors})
        with self.state.lock:
            self.state.next_id += 1
            number = self.state.next_id - 10000
            issue = {
                "id": str(self.state.next_id), "key": "%s-%d" % (self.state.project, number),
                "fields": fields, "status": STATUS_TODO, "resolution": None, "comments": [],
                "created": now_iso(), "created_at": time.time(), "deleted": False,
            }
            self.state.issues.append(issue)
            delay = self.state.create_delay
        if delay:
            # Stored, but the answer is late: a client killed now never learns the key.
            time.sleep(delay)
        self.send(201, {"id": issue["id"], "key": issue["key"], "self": self.base() + "/rest/api/2/issue/" + issue["id"]})

    def webhook(self, payload):
        with self.state.lock:
            self.state.webhooks.append({"body": payload, "idempotency_key": self.headers.get("Idempotency-Key") or ""})
            number = len(self.state.webhooks)
        if payload.get("action") == "open":
            return self.send(200, {"key": "HOOK-%d" % number, "url": self.base() + "/hooks/ticket/HOOK-%d" % number})
        self.send(200, {})

    def search(self, query):
        jql = (query.get("jql") or [""])[0]
        match = re.fullmatch(
            r'\s*labels\s*=\s*"?([^"\s]+)"?\s*(AND\s+statusCategory\s*!=\s*Done\s*)?(ORDER\s+BY\s+(key|created)\s+(ASC|DESC)\s*)?',
            jql, re.IGNORECASE)
        if not match:
            return self.send(400, {"errorMessages": ["Error in the JQL Query: the stand-in understands only labels = \"...\" (got: %s)" % jql], "errors": {}})
        label, open_only = match.group(1), bool(match.group(2))
        wanted = [f for f in (query.get("fields") or [""])[0].split(",") if f] or None
        with self.state.lock:
            indexed_before = time.time() - self.state.index_lag
            found = [i for i in self.state.issues
                     if not i["deleted"] and label in (i["fields"].get("labels") or [])
                     and i["created_at"] <= indexed_before
                     and not (open_only and i["status"] is STATUS_DONE)]
        if match.group(5) and match.group(5).upper() == "DESC":
            found.reverse()
        self.send(200, {"startAt": 0, "maxResults": 50, "total": len(found),
                        "issues": [self.issue_view(i, wanted) for i in found[:50]]})

    # -- control channel --------------------------------------------------------------------

    def control(self, method, url):
        state = self.state
        what = url.path[len("/_standin/"):]
        payload = self.body_json() if method == "POST" else None
        payload = payload or {}
        with state.lock:
            if what == "fail" and method == "POST":
                for _ in range(int(payload.get("count", 1))):
                    state.fail.append({"status": int(payload["status"]), "retry_after": payload.get("retry_after"), "body": payload.get("body")})
                return self.send(200, {"queued": len(state.fail)})
            if what == "down" and method == "POST":
                state.down = bool(payload.get("down", True))
                return self.send(200, {"down": state.down})
            if what == "create-delay" and method == "POST":
                state.create_delay = float(payload.get("seconds", 0))
                return self.send(200, {"seconds": state.create_delay})
            if what == "index-lag" and method == "POST":
                state.index_lag = float(payload.get("seconds", 0))
                return self.send(200, {"seconds": state.index_lag})
            if what == "forbid-delete" and method == "POST":
                state.forbid_delete = bool(payload.get("forbid", True))
                return self.send(200, {"forbid": state.forbid_delete})
            if what == "resolve" and method == "POST":
                issue = state.find(payload.get("key", ""))
                if issue is None:
                    return self.send(404, {"error": "no issue %s" % payload.get("key")})
                issue["status"] = STATUS_DONE
                issue["resolution"] = {"id": "10000", "name": "Fixed"}
                return self.send(200, {"key": issue["key"]})
            if what == "reset" and method == "POST":
                state.fail, state.down, state.create_delay, state.index_lag, state.forbid_delete = [], False, 0.0, 0.0, False
                return self.send(200, {})
            if what == "issues" and method == "GET":
                return self.send(200, {"issues": [
                    {"id": i["id"], "key": i["key"], "deleted": i["deleted"], "fields": i["fields"],
                     "status": i["status"]["name"], "resolution": i["resolution"], "comments": i["comments"]}
                    for i in state.issues]})
            if what == "webhooks" and method == "GET":
                return self.send(200, {"webhooks": state.webhooks})
            if what == "requests" and method == "GET":
                return self.send(200, {"requests": state.requests})
        self.send(404, {"error": "unknown control %s %s" % (method, url.path)})


def main():
    parser = argparse.ArgumentParser(description="Stand-in JIRA REST v2 server for tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--project", default="BYN")
    parser.add_argument("--user", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--bearer", default="")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args.project)
    server.auth = {"user": args.user, "token": args.token, "bearer": args.bearer}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    temporary = args.port_file + ".tmp"
    with open(temporary, "w") as handle:
        handle.write("%d\n" % server.server_address[1])
    os.rename(temporary, args.port_file)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
