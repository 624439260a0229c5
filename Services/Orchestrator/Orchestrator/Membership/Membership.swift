/// Which services run where, from their retained births and deaths. Pure: the caller passes
/// each status and the time, and gets back the transitions it caused.
///
/// A death whose session is lower than the last birth's is stale (the old instance's will,
/// published after the new one announced itself) and changes nothing; so does a status
/// repeating the current one. A host is up while any of its services is up.
public struct Membership: Sendable, Equatable {
    public struct Service: Sendable, Equatable {
        public var up: Bool
        public var session: UInt64
        public var sinceMs: Int64
        public init(up: Bool, session: UInt64, sinceMs: Int64) {
            self.up = up
            self.session = session
            self.sinceMs = sinceMs
        }
    }

    public struct Host: Sendable, Equatable {
        public var services: [String: Service] = [:]
        public var up = false
        public var sinceMs: Int64 = 0
    }

    /// A change someone may want to hear about (hooks).
    public enum Transition: Sendable, Equatable, Hashable {
        case service(host: String, service: String, up: Bool)
        case host(host: String, up: Bool)
    }

    public private(set) var hosts: [String: Host] = [:]

    public init() {}

    /// Applies one status: `birth` true for a birth, false for a death.
    public mutating func apply(host name: String, service: String, birth: Bool, session: UInt64, atMs: Int64) -> [Transition] {
        var host = hosts[name] ?? Host()
        let known = host.services[service]
        if let known {
            if session < known.session { return [] }  // stale: an older instance
            if known.up == birth && known.session == session { return [] }  // repeated
            if !birth && !known.up { return [] }  // already down (a later session's death repeats)
        } else if !birth {
            // Never seen up: remember it is down, nothing went down.
            host.services[service] = Service(up: false, session: session, sinceMs: atMs)
            if host.services.count == 1 { host.sinceMs = atMs }
            hosts[name] = host
            return []
        }
        host.services[service] = Service(up: birth, session: max(session, known?.session ?? 0), sinceMs: atMs)
        var transitions: [Transition] = [.service(host: name, service: service, up: birth)]
        let anyUp = host.services.values.contains { $0.up }
        if anyUp != host.up {
            host.up = anyUp
            host.sinceMs = atMs
            transitions.append(.host(host: name, up: anyUp))
        }
        hosts[name] = host
        return transitions
    }
}
