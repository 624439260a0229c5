/// Which services run where, from their retained births and deaths. Pure: the caller passes
/// each status and the time, and gets back the transitions it caused.
///
/// A death whose session is lower than the last birth's is stale (the old instance's will,
/// published after the new one announced itself) and changes nothing; so does a status
/// repeating the current one. A host is up while any of its services is up.
///
/// Applications (PicoRed's checks, each host's detector): an app going UP or DOWN from any
/// other reading is a transition; UNKNOWN (not checked yet, or the host isolated) and
/// STOPPED (a clean shutdown, "nice quit") are neither, so they run no handler. A detector
/// that dies without a clean shutdown (a crash, a lost host) takes its host's UP apps DOWN
/// with it: nobody checks them any more, and PicoRed treats a vanished host as down.
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
        /// Per application: true UP, false DOWN, nil neither (unknown, stopped).
        public var apps: [String: Bool?] = [:]
    }

    /// A change someone may want to hear about (hooks).
    public enum Transition: Sendable, Equatable, Hashable {
        case service(host: String, service: String, up: Bool)
        case host(host: String, up: Bool)
        case app(host: String, app: String, up: Bool)
    }

    /// The service whose death takes a host's applications down with it: the one that checks them.
    public static let appChecker = "detector"

    public private(set) var hosts: [String: Host] = [:]

    public init() {}

    /// Applies one application reading: `up` true for UP, false for DOWN, nil for anything
    /// else (unknown, stopped).
    public mutating func apply(host name: String, app: String, up: Bool?, atMs: Int64) -> [Transition] {
        var host = hosts[name] ?? Host()
        let known = host.apps[app] ?? nil
        host.apps[app] = .some(up)
        hosts[name] = host
        guard let up, up != known else { return [] }
        return [.app(host: name, app: app, up: up)]
    }

    /// Applies one status: `birth` true for a birth, false for a death (`clean` when the
    /// service said it shut down cleanly).
    public mutating func apply(host name: String, service: String, birth: Bool, session: UInt64, atMs: Int64, clean: Bool = false) -> [Transition] {
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
        if !birth, !clean, service == Self.appChecker {
            for (app, up) in host.apps.sorted(by: { $0.key < $1.key }) where up == true {
                host.apps[app] = .some(false)
                transitions.append(.app(host: name, app: app, up: false))
            }
        }
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
