/// One host's Bynar configuration: `/etc/bynar/bynar.json` by default.
///
/// A superset of the original Bynar's `bynar.json`, so an existing file loads unchanged.
/// Keys are snake_case in the file (`db_location`), camelCase here (`dbLocation`). Every
/// field has a default, so a file only names what differs. Unknown keys are an error:
/// a typo must not silently fall back to a default.
public struct BynarConfig: Codable, Sendable, Equatable {
    /// Name this host goes by on the bus; default: the machine's host name.
    public var host: String?
    public var broker = BrokerConfig()
    public var detector = DetectorConfig()
    public var diskManager = DiskManagerConfig()
    public var ticketing = TicketingConfig()
    public var notifier = NotifierConfig()
    public var orchestrator = OrchestratorConfig()
    /// Prometheus metrics: on by default, on loopback (``MetricsConfig``).
    public var metrics = MetricsConfig()
    /// Directory for each service's local SQLite store (`<db_location>/<service>.sqlite`).
    public var dbLocation = "/var/lib/bynar"
    /// trace, debug, info, notice, warning, error or critical. Read again on reload
    /// (SIGHUP, or the config file changing).
    public var logLevel = "info"
    /// "text" (one line per entry; no timestamp under systemd, journald adds it) or "json"
    /// (one object per line with the entry's fields: service, host, incident, disk, ...).
    public var logFormat = "text"
    /// HTTP(S) proxy for outgoing HTTP (JIRA, Slack), e.g. `http://proxy:3128`.
    public var proxy: String?

    // JIRA (Bynar's fields).
    public var jiraUser: String?
    public var jiraPassword: String?
    public var jiraHost: String?
    public var jiraIssueType: String?
    public var jiraPriority: String?
    public var jiraProjectId: String?
    public var jiraTicketAssignee: String?

    // Slack (Bynar's fields).
    public var slackWebhook: String?
    public var slackChannel: String?
    public var slackBotname: String?

    // Fields of Bynar's bynar.json this Bynar maps or does not use: accepted so old files load,
    // and each named at start with what replaces it (LegacyFields.swift).
    public var backend: String?
    public var vaultEndpoint: String?
    public var vaultToken: String?
    public var managerHost: String?
    public var managerPort: Int?
    public var daemonOutput: String?
    public var daemonPid: String?
    public var database: LegacyDatabase?

    public init() {}

    /// Bynar's Postgres section; unused here (the local store is SQLite).
    public struct LegacyDatabase: Codable, Sendable, Equatable {
        public var username: String?
        public var password: String?
        public var port: Int?
        public var dbname: String?
        public var endpoint: String?
    }
}

/// How to reach the MQTT broker.
public struct BrokerConfig: Codable, Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 1883
    /// TLS is on when this section is present.
    public var tls: TLSConfig?
    public var username: String?
    public var password: String?
    /// File holding the password (first line), so it need not sit in the config.
    public var passwordFile: String?
    /// MQTT client id; default `<service>-<host>`. Must be unique on the broker.
    public var clientId: String?
    public var keepaliveSeconds = 30
    /// How long the broker keeps this client's session (subscriptions and queued QoS 1
    /// messages) while it is disconnected.
    public var sessionExpirySeconds: UInt32 = 7 * 24 * 3600
    /// Reconnect backoff: starts at the minimum, doubles, capped at the maximum.
    public var reconnectMinSeconds = 1
    public var reconnectMaxSeconds = 30
    /// How long a QoS 1 publish may wait for the broker's acknowledgement.
    public var publishTimeoutMs = 10_000
    /// QoS 1 messages in flight (sent, not yet acknowledged) at once.
    public var maxInflight = 100
    /// Messages a subscription buffers for a slow consumer before it counts overflow.
    public var subscriptionBuffer = 4096
    /// ... and at most this many payload bytes (8 MiB): the worst case a slow consumer can
    /// hold is this per subscription, not 4096 x the broker's 256 KiB packet limit.
    public var subscriptionBufferBytes = 8 << 20

    public init() {}
}

/// TLS towards the broker.
public struct TLSConfig: Codable, Sendable, Equatable {
    /// CA certificate(s) that signed the broker's certificate.
    public var caFile: String?
    /// Directory of CA certificates (alternative to ca_file).
    public var caPath: String?
    /// Client certificate and key, when the broker asks for one.
    public var certFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, caPath: String? = nil, certFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.caPath = caPath
        self.certFile = certFile
        self.keyFile = keyFile
    }
}
