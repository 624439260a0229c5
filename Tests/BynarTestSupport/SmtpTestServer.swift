import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real SMTP server for tests: Debian's aiosmtpd (python3-aiosmtpd) run by
/// /usr/bin/python3, on a free loopback port, stopped by pid on `stop()` and on deinit.
///
/// Modes: `.startTLS` (STARTTLS required before AUTH), `.tls` (implicit TLS), both with
/// AUTH PLAIN/LOGIN for user "bynar", password "secret" and a throwaway certificate for
/// `localhost`/127.0.0.1 made by openssl (``caFile`` trusts it); `.plain` (no TLS, no AUTH).
/// Every message it accepts is written as JSON to ``received``.
public final class SmtpTestServer: @unchecked Sendable {
    public enum Mode: String, Sendable {
        case startTLS = "starttls"
        case tls
        case plain
    }

    public static let username = "bynar"
    public static let password = "secret"

    public let port: Int
    public let directory: String
    /// The certificate to trust (its own CA), for TLS modes.
    public let caFile: String
    private let process: ChildProcess

    /// Whether the Debian python has aiosmtpd (tests skip with a message when not).
    public static var available: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")
            && FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/aiosmtpd")
    }

    public init(mode: Mode) throws {
        directory = try makeTemporaryDirectory(prefix: "bynar-smtp")
        caFile = directory + "/cert.pem"
        try FileManager.default.createDirectory(atPath: directory + "/out", withIntermediateDirectories: true)
        try Self.script.write(toFile: directory + "/smtp_server.py", atomically: true, encoding: .utf8)
        var arguments = [directory + "/smtp_server.py", directory + "/port", directory + "/out", mode.rawValue]
        if mode != .plain {
            let openssl = try ChildProcess("/usr/bin/openssl", [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", directory + "/key.pem", "-out", caFile,
            ], outputPath: directory + "/openssl.log")
            guard openssl.waitForExit(timeout: .seconds(30)) != nil, openssl.exitCode == 0 else {
                throw TestSupportError("openssl could not make a certificate: \((try? String(contentsOfFile: directory + "/openssl.log", encoding: .utf8)) ?? "")")
            }
            arguments += [caFile, directory + "/key.pem"]
        }
        process = try ChildProcess("/usr/bin/python3", arguments, outputPath: directory + "/server.log")
        port = try portWrittenBy(process, to: directory + "/port", name: "aiosmtpd", log: directory + "/server.log")
    }

    /// One accepted message.
    public struct Received: Decodable, Sendable {
        public var mail_from: String
        public var rcpt_tos: [String]
        public var subject: String
        public var text: String?
        public var html: String?
        public var content_type: String
        public var raw: String
    }

    /// Messages accepted so far, in order.
    public var received: [Received] {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/out")) ?? [])
            .filter { $0.hasSuffix(".json") }
            .sorted { Int($0.dropLast(5)) ?? 0 < Int($1.dropLast(5)) ?? 0 }
        return files.compactMap { name in
            (try? Data(contentsOf: URL(fileURLWithPath: directory + "/out/" + name))).flatMap { try? JSONDecoder().decode(Received.self, from: $0) }
        }
    }

    /// What the server logged.
    public var log: String { (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? "" }

    public func stop() {
        process.stop(SIGTERM)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    static let script = #"""
#!/usr/bin/python3
"""A real SMTP server for the notifier tests: Debian's aiosmtpd (python3-aiosmtpd).

Each accepted message is written to OUT_DIR/<n>.json as
{"mail_from", "rcpt_tos", "subject", "text", "html", "raw"} (bodies decoded from MIME).

Usage: smtp_server.py PORT_FILE OUT_DIR MODE [CERT KEY]
  MODE: starttls  STARTTLS offered (required before AUTH), AUTH PLAIN/LOGIN for user
                  "bynar" with password "secret"
        tls       implicit TLS from the first byte, same AUTH
        plain     no TLS, no AUTH
"""
import asyncio
import email
import email.policy
import json
import os
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, SMTP

port_file, out_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
count = 0


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"bynar" and auth_data.password == b"secret"
    # handled=False: aiosmtpd answers a failure itself (535 5.7.8).
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        text = html = None
        for part in message.walk():
            if part.get_content_type() == "text/plain" and text is None:
                text = part.get_content()
            elif part.get_content_type() == "text/html" and html is None:
                html = part.get_content()
        record = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                  "subject": str(message["subject"]), "text": text, "html": html,
                  "content_type": message.get_content_type(),
                  "raw": (envelope.original_content or b"").decode("utf-8", "replace")}
        path = os.path.join(out_dir, "%d.json" % count)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


context = None
if mode in ("starttls", "tls"):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[4], sys.argv[5])

port = free_port()
kwargs = dict(hostname="127.0.0.1", port=port)
if mode == "starttls":
    controller = Controller(Handler(), tls_context=context, require_starttls=True,
                            authenticator=authenticator, auth_required=True, auth_require_tls=True, **kwargs)
elif mode == "tls":
    controller = Controller(Handler(), ssl_context=context, authenticator=authenticator,
                            auth_required=True, auth_require_tls=False, **kwargs)
else:
    controller = Controller(Handler(), **kwargs)
controller.start()
with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
os.rename(port_file + ".tmp", port_file)
try:
    asyncio.run(asyncio.Event().wait())
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
"""#
}
