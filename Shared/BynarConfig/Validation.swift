#if canImport(Glibc)
import Glibc
#endif

extension BynarConfig {
    /// Contradictions and impossible values, each naming its field. Empty when valid.
    public func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: field, problem: text)) }

        if let host {
            if let reason = Topic.invalidSegmentReason(host) { problem("host", reason) }
        }
        if dbLocation.isEmpty { problem("db_location", "must not be empty") }
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        if !levels.contains(logLevel) { problem("log_level", "must be one of \(levels.joined(separator: ", ")), got \"\(logLevel)\"") }
        if !["text", "json"].contains(logFormat) { problem("log_format", "must be \"text\" or \"json\", got \"\(logFormat)\"") }
        if let proxy, !(proxy.hasPrefix("http://") || proxy.hasPrefix("https://")) {
            problem("proxy", "must be an http:// or https:// URL, got \"\(proxy)\"")
        }
        if let slackWebhook, !slackWebhook.hasPrefix("https://"), !slackWebhook.hasPrefix("http://") {
            problem("slack_webhook", "must be an http(s) URL")
        }
        problems += broker.validate()
        problems += detector.validate()
        problems += diskManager.validate()
        problems += ticketing.validate()
        problems += notifier.validate()
        problems += orchestrator.validate()
        problems += metrics.validate()
        return problems
    }
}

extension BrokerConfig {
    func validate() -> [FieldError] {
        var problems: [FieldError] = []
        func problem(_ field: String, _ text: String) { problems.append(FieldError(field: "broker." + field, problem: text)) }

        if host.isEmpty { problem("host", "must not be empty") }
        if !(1...65535).contains(port) { problem("port", "must be 1-65535, got \(port)") }
        if !(5...65535).contains(keepaliveSeconds) { problem("keepalive_seconds", "must be 5-65535, got \(keepaliveSeconds)") }
        if reconnectMinSeconds < 1 { problem("reconnect_min_seconds", "must be at least 1, got \(reconnectMinSeconds)") }
        if reconnectMaxSeconds < reconnectMinSeconds {
            problem("reconnect_max_seconds", "must be at least reconnect_min_seconds (\(reconnectMinSeconds)), got \(reconnectMaxSeconds)")
        }
        if publishTimeoutMs < 100 { problem("publish_timeout_ms", "must be at least 100, got \(publishTimeoutMs)") }
        if !(1...65535).contains(maxInflight) { problem("max_inflight", "must be 1-65535, got \(maxInflight)") }
        if subscriptionBuffer < 1 { problem("subscription_buffer", "must be at least 1, got \(subscriptionBuffer)") }
        if subscriptionBufferBytes < 65_536 { problem("subscription_buffer_bytes", "must be at least 65536, got \(subscriptionBufferBytes)") }
        if password != nil && passwordFile != nil { problem("password_file", "set either password or password_file, not both") }
        if (password != nil || passwordFile != nil) && (username ?? "").isEmpty { problem("username", "is required when a password is set") }
        if let passwordFile, let reason = unreadable(passwordFile) { problem("password_file", reason) }
        if let clientId, clientId.isEmpty || clientId.utf8.count > 65535 { problem("client_id", "must be 1-65535 bytes") }
        if let tls {
            if tls.caFile == nil && tls.caPath == nil { problem("tls", "needs ca_file or ca_path to verify the broker") }
            if (tls.certFile == nil) != (tls.keyFile == nil) { problem("tls", "cert_file and key_file go together") }
            for (field, path) in [("ca_file", tls.caFile), ("ca_path", tls.caPath), ("cert_file", tls.certFile), ("key_file", tls.keyFile)] {
                if let path, let reason = unreadable(path) { problem("tls." + field, reason) }
            }
        }
        return problems
    }
}

/// Why `path` cannot be read by this process, or nil when it can.
func unreadable(_ path: String) -> String? {
    if access(path, R_OK) == 0 { return nil }
    return "cannot read \(path): \(String(cString: strerror(errno)))"
}

/// Rules for MQTT topic segments built from names in the config.
public enum Topic {
    /// Why `segment` cannot be one level of a topic (host and service names become topic
    /// levels), or nil when it can.
    public static func invalidSegmentReason(_ segment: String) -> String? {
        if segment.isEmpty { return "must not be empty" }
        if let bad = segment.first(where: { "/+#".contains($0) || $0.isWhitespace || $0.asciiValue.map { $0 < 32 } == true }) {
            return "must not contain \"\(bad)\" (it becomes a topic level), got \"\(segment)\""
        }
        return nil
    }
}
