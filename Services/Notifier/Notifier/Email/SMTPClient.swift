import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How to reach and log in to an SMTP server.
struct SMTPSettings: Sendable {
    enum Security: String, Sendable {
        /// Plain connection upgraded with STARTTLS; fails if the server does not offer it.
        case startTLS = "starttls"
        /// TLS from the first byte (port 465).
        case tls
        /// No encryption (a relay on the same host).
        case none
    }
    var host: String
    var port: Int
    var security: Security
    /// PEM file of CA certificates to trust; the system's trust store otherwise.
    var caFile: String?
    var username: String?
    var password: String?
    var heloName: String
    /// Connecting, and each reply, must take no longer than this.
    var timeout: Duration

    init(host: String, port: Int, security: Security, caFile: String? = nil, username: String? = nil, password: String? = nil, heloName: String, timeout: Duration = .seconds(30)) {
        self.host = host
        self.port = port
        self.security = security
        self.caFile = caFile
        self.username = username
        self.password = password
        self.heloName = heloName
        self.timeout = timeout
    }
}

/// Why a message was not handed over, in words for an operator.
enum SMTPError: Error, Sendable, CustomStringConvertible {
    /// No connection (refused, unreachable, name not found, timed out).
    case connect(server: String, reason: String)
    /// The server answered a command with an error reply.
    case reply(server: String, command: String, code: Int, text: String)
    /// No reply within the timeout.
    case timeout(server: String, command: String)
    /// TLS failed (certificate not trusted, handshake refused).
    case tls(server: String, reason: String)
    /// The connection ended while waiting for `command`'s reply.
    case closed(server: String, command: String)
    /// The server lacks something the settings require (STARTTLS, an AUTH mechanism).
    case unsupported(server: String, reason: String)

    var description: String {
        switch self {
        case .connect(let server, let reason): return "cannot connect to SMTP server \(server): \(reason)"
        case .reply(let server, let command, let code, let text): return "SMTP server \(server) answered \(command) with \(code) \(text)"
        case .timeout(let server, let command): return "SMTP server \(server) did not answer \(command) in time"
        case .tls(let server, let reason): return "TLS with SMTP server \(server) failed: \(reason)"
        case .closed(let server, let command): return "SMTP server \(server) closed the connection while we waited for the reply to \(command)"
        case .unsupported(let server, let reason): return "SMTP server \(server): \(reason)"
        }
    }

    /// True when sending again unchanged cannot succeed (a 5xx reply, a missing feature, an
    /// untrusted certificate): the message is parked and the error reported. Everything
    /// else (4xx, no connection, timeouts) is worth retrying.
    var isPermanent: Bool {
        switch self {
        case .reply(_, _, let code, _): return code >= 500
        case .unsupported, .tls: return true
        case .connect, .timeout, .closed: return false
        }
    }
}

/// An SMTP client (RFC 5321) on SwiftNIO: EHLO, STARTTLS or implicit TLS (NIOSSL),
/// AUTH PLAIN or LOGIN, MAIL FROM, RCPT TO, DATA with dot-stuffing, QUIT. One connection
/// per message; digests and error mails are few.
struct SMTPClient: Sendable {
    let settings: SMTPSettings
    private let group: any EventLoopGroup

    init(settings: SMTPSettings, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.settings = settings
        self.group = group
    }

    private var server: String { "\(settings.host):\(settings.port)" }

    /// Delivers `message` to every recipient or throws ``SMTPError`` naming the step and
    /// the server's reply code and text.
    func send(_ message: MailMessage) async throws {
        let tlsContext = try makeTLSContext()
        let tlsFailure = TLSFailure()
        let channel = try await connect(tls: settings.security == .tls ? tlsContext : nil, tlsFailure: tlsFailure)
        defer { channel.close(promise: nil) }
        let session = Session(channel: channel, server: server, timeout: settings.timeout, tlsFailure: tlsFailure)

        try await session.expect(nil, as: "greeting", 220)
        var capabilities = try await ehlo(session)
        if settings.security == .startTLS, let tlsContext {
            guard capabilities.contains(where: { $0.uppercased() == "STARTTLS" }) else {
                throw SMTPError.unsupported(server: server, reason: "does not offer STARTTLS (security is \"starttls\"; use \"tls\" for port 465 or \"none\" for a plain relay)")
            }
            try await session.expect("STARTTLS", 220)
            let name = Self.sniName(settings.host)
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: name), position: .first)
            }.get()
            capabilities = try await ehlo(session)
        }
        if let username = settings.username {
            try await authenticate(session, username: username, password: settings.password ?? "", capabilities: capabilities)
        }
        try await session.expect("MAIL FROM:<\(message.from)>", 250)
        for recipient in message.to {
            try await session.expect("RCPT TO:<\(recipient)>", 250, 251)
        }
        try await session.expect("DATA", 354)
        try await session.expect(raw: MailMessage.dotStuffed(message.rendered()), as: "DATA (message body)", 250)
        // The message is accepted; a failing QUIT changes nothing.
        _ = try? await session.send("QUIT")
    }

    private func ehlo(_ session: Session) async throws -> [String] {
        let reply = try await session.expect("EHLO \(settings.heloName)", 250)
        // The first line is the server's greeting; the rest are its extensions.
        return Array(reply.lines.dropFirst())
    }

    private func authenticate(_ session: Session, username: String, password: String, capabilities: [String]) async throws {
        let mechanisms = capabilities
            .first { $0.uppercased().hasPrefix("AUTH ") || $0.uppercased().hasPrefix("AUTH=") }
            .map { $0.dropFirst(5).uppercased().split(separator: " ").map(String.init) } ?? []
        func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
        if mechanisms.contains("PLAIN") {
            try await session.expect("AUTH PLAIN " + base64("\0\(username)\0\(password)"), as: "AUTH PLAIN", 235)
        } else if mechanisms.contains("LOGIN") {
            try await session.expect("AUTH LOGIN", 334)
            try await session.expect(base64(username), as: "AUTH LOGIN (user name)", 334)
            try await session.expect(base64(password), as: "AUTH LOGIN (password)", 235)
        } else {
            let offered = mechanisms.isEmpty ? "none (some servers offer AUTH only after STARTTLS)" : mechanisms.joined(separator: " ")
            throw SMTPError.unsupported(server: server, reason: "a user name is configured but the server offers no AUTH PLAIN or LOGIN (offers: \(offered))")
        }
    }

    private func makeTLSContext() throws -> NIOSSLContext? {
        guard settings.security != .none else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile = settings.caFile { configuration.trustRoots = .file(caFile) }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw SMTPError.tls(server: server, reason: "cannot set up TLS (ca_file \(settings.caFile ?? "system")): \(error)")
        }
    }

    private func connect(tls: NIOSSLContext?, tlsFailure: TLSFailure) async throws -> any Channel {
        let name = Self.sniName(settings.host)
        let timeout = TimeAmount.nanoseconds(Int64(settings.timeout.components.seconds) * 1_000_000_000 + settings.timeout.components.attoseconds / 1_000_000_000)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHandler(SMTPReplyHandler(tlsFailure: tlsFailure))
                }
            }
        do {
            return try await bootstrap.connect(host: settings.host, port: settings.port).get()
        } catch {
            throw SMTPError.connect(server: server, reason: Self.describe(error))
        }
    }

    /// SNI takes a name, not an IP address; for an address NIOSSL checks the certificate
    /// against the address instead.
    static func sniName(_ host: String) -> String? {
        let isIPv4 = host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
        return isIPv4 || host.contains(":") ? nil : host
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return "\(error.description)" }
        if case ChannelError.connectTimeout(let amount) = error { return "connect timed out after \(amount.nanoseconds / 1_000_000) ms" }
        if let error = error as? NIOConnectionError {
            let attempts = error.connectionErrors.map { "\($0.target): \(describe($0.error))" }
            if error.dnsAAAAError != nil && error.dnsAError != nil { return "host name not found" }
            return attempts.isEmpty ? "\(error)" : attempts.joined(separator: "; ")
        }
        return "\(error)"
    }
}

/// The first TLS error on a connection, seen by the handler, read by the session.
final class TLSFailure: Sendable {
    private let first = Mutex<String?>(nil)
    func record(_ reason: String) { first.withLock { if $0 == nil { $0 = reason } } }
    var reason: String? { first.withLock { $0 } }
}

/// One SMTP reply: the code and its lines (a multi-line reply has several).
struct SMTPReply: Sendable {
    var code: Int
    var lines: [String]
    var text: String { lines.joined(separator: " / ") }
}

/// Sends commands over one connection and waits for each reply in turn.
private struct Session {
    let channel: any Channel
    let server: String
    let timeout: Duration
    let tlsFailure: TLSFailure

    /// Sends `command` (nil: send nothing, just read the next reply) and returns the reply,
    /// or throws if its code is not one of `accepted`.
    @discardableResult
    func expect(_ command: String?, as name: String? = nil, _ accepted: Int...) async throws -> SMTPReply {
        let label = name ?? command ?? "greeting"
        let reply = try await send(command.map { $0 + "\r\n" }, label: label)
        guard accepted.contains(reply.code) else {
            throw SMTPError.reply(server: server, command: label, code: reply.code, text: reply.text)
        }
        return reply
    }

    @discardableResult
    func expect(raw: String, as name: String, _ accepted: Int...) async throws -> SMTPReply {
        let reply = try await send(raw, label: name)
        guard accepted.contains(reply.code) else {
            throw SMTPError.reply(server: server, command: name, code: reply.code, text: reply.text)
        }
        return reply
    }

    @discardableResult
    func send(_ command: String) async throws -> SMTPReply {
        try await send(command + "\r\n", label: command)
    }

    private func send(_ bytes: String?, label: String) async throws -> SMTPReply {
        let promise = channel.eventLoop.makePromise(of: SMTPReply.self)
        let timedOut = Mutex(false)
        let channel = self.channel
        let (server, timeout) = (self.server, self.timeout)
        // Whatever happens to the connection, the reply promise is completed: by the reply,
        // by the handler failing it, by a write that never reached the handler (the
        // connection closed first), or by the timer. Later completions are ignored.
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000)) {
            timedOut.withLock { $0 = true }
            promise.fail(SMTPError.timeout(server: server, command: label))
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        channel.writeAndFlush(SMTPReplyHandler.Request(bytes: bytes, reply: promise)).whenFailure { error in
            promise.fail(error)
        }
        do {
            return try await promise.futureResult.get()
        } catch {
            if timedOut.withLock({ $0 }) { throw SMTPError.timeout(server: server, command: label) }
            // A TLS failure closes the connection; whatever error the waiting request saw,
            // the TLS one is the cause.
            if let reason = tlsFailure.reason { throw SMTPError.tls(server: server, reason: reason) }
            if let error = error as? SMTPError { throw error }
            if case ChannelError.ioOnClosedChannel = error { throw SMTPError.closed(server: server, command: label) }
            throw SMTPError.closed(server: server, command: "\(label) (\(error))")
        }
    }
}

/// Parses replies (`250-...` continuation lines, `250 ...` last line) and hands each to the
/// oldest request waiting for one; a reply that arrives first (the greeting) waits for its
/// request. A closed connection or an error fails every waiting request.
final class SMTPReplyHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Request
    typealias OutboundOut = ByteBuffer

    /// Bytes to send (nil: none) and where the next reply goes.
    struct Request: Sendable {
        var bytes: String?
        var reply: EventLoopPromise<SMTPReply>
    }

    private var buffer = ByteBuffer()
    private var lines: [String] = []
    private var waiting = CircularBuffer<EventLoopPromise<SMTPReply>>()
    private var unclaimed = CircularBuffer<SMTPReply>()
    private var failure: (any Error)?
    private let tlsFailure: TLSFailure

    init(tlsFailure: TLSFailure) {
        self.tlsFailure = tlsFailure
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.reply.fail(failure)
        } else if let reply = unclaimed.popFirst() {
            request.reply.succeed(reply)
        } else {
            waiting.append(request.reply)
        }
        if let bytes = request.bytes {
            context.write(wrapOutboundOut(context.channel.allocator.buffer(string: bytes)), promise: promise)
        } else {
            promise?.succeed(())
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex + 1
            guard var line = buffer.readString(length: length) else { break }
            while line.last == "\n" || line.last == "\r" || line.last == "\r\n" { line.removeLast() }
            handle(line: line)
        }
        if buffer.readableBytes > 64 * 1024 {
            fail(context: context, SMTPReplyHandler.Malformed(text: "reply line longer than 64 KiB"))
        }
    }

    private func handle(line: String) {
        let code = Int(line.prefix(3)) ?? 0
        let separator = line.dropFirst(3).first
        lines.append(String(line.dropFirst(4)))
        guard separator != "-" else { return }
        let reply = SMTPReply(code: code, lines: lines)
        lines = []
        if let waiter = waiting.popFirst() { waiter.succeed(reply) } else { unclaimed.append(reply) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(context: context, ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context: context, error)
    }

    private func fail(context: ChannelHandlerContext, _ error: any Error) {
        if failure == nil { failure = error }
        if error is NIOSSLError || error is BoringSSLError { tlsFailure.record("\(error)") }
        while let waiter = waiting.popFirst() { waiter.fail(failure ?? error) }
        context.close(promise: nil)
    }

    struct Malformed: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }
}
