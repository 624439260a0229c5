#if canImport(Glibc)
import Glibc
#endif

/// Secrets never reach a log line: what a config prints, the URLs a config error echoes,
/// and a warning when a file holding secrets is readable by others.
public enum Redaction {
    /// Field names (any case, any part of the name) whose values are secrets: passwords,
    /// tokens, and webhook URLs (a Slack webhook URL is itself the credential).
    static let secretNames = ["password", "token", "secret", "webhook", "privatekey"]

    static func isSecret(_ name: String) -> Bool {
        let lowered = String(name.lowercased().filter { $0 != "_" })
        return secretNames.contains { lowered.contains($0) } && !lowered.hasSuffix("file")
    }

    /// `value` described field by field (as Swift would print it), with every secret field
    /// that is set shown as `<redacted>`. Used by the config types' descriptions.
    public static func describe(_ value: Any) -> String {
        let mirror = Mirror(reflecting: value)
        switch mirror.displayStyle {
        case .struct?, .class?:
            let fields = mirror.children.map { child -> String in
                let name = child.label ?? "_"
                return "\(name): " + (isSecret(name) && !isNil(child.value) ? "<redacted>" : describe(child.value))
            }
            return "\(mirror.subjectType)(" + fields.joined(separator: ", ") + ")"
        case .optional?:
            guard let wrapped = mirror.children.first?.value else { return "nil" }
            return describe(wrapped)
        case .collection?, .set?, .dictionary?:
            return "[" + mirror.children.map { describe($0.value) }.joined(separator: ", ") + "]"
        case .tuple?:
            return "(" + mirror.children.map { ($0.label.map { "\($0): " } ?? "") + describe($0.value) }.joined(separator: ", ") + ")"
        default:
            if let text = value as? String { return String(reflecting: text) }
            return String(describing: value)
        }
    }

    static func isNil(_ value: Any) -> Bool {
        let mirror = Mirror(reflecting: value)
        return mirror.displayStyle == .optional && mirror.children.isEmpty
    }

    /// `text` with the password of every `scheme://user:password@host` in it replaced by
    /// `<redacted>`, so an error that echoes a proxy URL names it without its credential.
    public static func url(_ text: String) -> String {
        var out = ""
        var rest = Substring(text)
        func schemeEnd(_ text: Substring) -> Substring.Index? {
            var index = text.startIndex
            while index < text.endIndex {
                if text[index...].hasPrefix("://") { return text.index(index, offsetBy: 3) }
                index = text.index(after: index)
            }
            return nil
        }
        while let end = schemeEnd(rest) {
            out += rest[..<end]
            rest = rest[end...]
            let authorityEnd = rest.firstIndex { $0 == "/" || $0 == " " || $0 == "\"" } ?? rest.endIndex
            let authority = rest[..<authorityEnd]
            if let at = authority.lastIndex(of: "@") {
                let userInfo = authority[..<at]
                if let colon = userInfo.firstIndex(of: ":") {
                    out += userInfo[..<colon] + ":<redacted>"
                } else {
                    out += userInfo
                }
                out += authority[at...]
            } else {
                out += authority
            }
            rest = rest[authorityEnd...]
        }
        return out + rest
    }

    /// Why the file at `path` (which holds `what`) is too open, or nil: readable by others,
    /// or writable by group or others. Group-readable is fine (a service's own group).
    public static func looseFileReason(_ path: String, what: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let mode = info.st_mode & 0o777
        guard mode & 0o004 != 0 || mode & 0o022 != 0 else { return nil }
        let octal = String(mode, radix: 8)
        let problem = mode & 0o004 != 0 ? "readable by every user" : "writable by others than its owner"
        return "\(path) (\(what)) has mode 0\(octal): \(problem); chmod 0600 it (or 0640 for a service group)"
    }
}

extension BynarConfig: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { Redaction.describe(self) }
    public var debugDescription: String { Redaction.describe(self) }

    /// Files this config names that hold secrets, with what each holds: checked at start.
    public var secretFiles: [(path: String, what: String)] {
        var files: [(String, String)] = []
        if let file = broker.passwordFile { files.append((file, "broker.password_file")) }
        if let file = broker.tls?.keyFile { files.append((file, "broker.tls.key_file")) }
        if let file = orchestrator.signingKeyFile { files.append((file, "orchestrator.signing_key_file")) }
        if let file = notifier.email.passwordFile { files.append((file, "notifier.email.password_file")) }
        if let file = ticketing.jira.apiTokenFile { files.append((file, "ticketing.jira.api_token_file")) }
        if let file = ticketing.jira.personalAccessTokenFile { files.append((file, "ticketing.jira.personal_access_token_file")) }
        if let file = ticketing.webhook.bearerTokenFile { files.append((file, "ticketing.webhook.bearer_token_file")) }
        return files
    }
}

extension BrokerConfig: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { Redaction.describe(self) }
    public var debugDescription: String { Redaction.describe(self) }
}
