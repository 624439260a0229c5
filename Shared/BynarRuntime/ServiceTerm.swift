public import BynarStore
public import BynarConfig
public import Logging

/// A term of a service that runs as one leader among several (the orchestrator with
/// `orchestrator.coordination.etcd`): what ``ServiceMain`` needs to run it while it leads.
public struct ServiceTerm: Sendable {
    /// Where every write of the service's store goes before it commits.
    public var replicator: any StoreReplicator
    /// The replicator's own tables' migrations, run after the service's.
    public var localMigrations: [LocalStore.Migration]
    /// Whether this process may still publish state: its lease was renewed recently
    /// enough that no other leader can exist yet. A leader that was paused (SIGSTOP, a
    /// stall) finds this false when it wakes and withholds its outbox until it knows.
    public var mayPublish: @Sendable () -> Bool
    /// The group and epoch signed commands carry (fencing at the disk-manager).
    public var fenceGroup: String
    public var epoch: Int64
    /// Why the term is over (lease lost, etcd unreachable, another leads); nil while it lasts.
    public var endedWhy: @Sendable () -> String?
    /// Called with the store once it is open.
    public var opened: @Sendable (LocalStore) -> Void

    public init(replicator: any StoreReplicator, localMigrations: [LocalStore.Migration], mayPublish: @escaping @Sendable () -> Bool, fenceGroup: String, epoch: Int64,
                endedWhy: @escaping @Sendable () -> String?, opened: @escaping @Sendable (LocalStore) -> Void) {
        self.replicator = replicator
        self.localMigrations = localMigrations
        self.mayPublish = mayPublish
        self.fenceGroup = fenceGroup
        self.epoch = epoch
        self.endedWhy = endedWhy
        self.opened = opened
    }

    /// The exit status of a process whose term ended: not a failure of its own, so the
    /// supervisor (systemd's Restart=on-failure) starts it again, as a standby.
    public static let endedExitStatus: Int32 = 75

    /// Why the service group stopped: the term ended.
    struct Ended: Error, CustomStringConvertible {
        var why: String
        var description: String { "the leadership term ended: \(why)" }
    }
}

/// A service that may run as one leader of several.
public protocol CoordinatedService: BynarService {
    /// Nil when this process runs alone (no coordination configured). Otherwise stands by
    /// until this process leads and returns its term (nil: cancelled while standing by).
    /// `storePath` is where the service's store lives; the replica is kept there.
    static func coordinate(config: BynarConfig, host: String, storePath: String, logger: Logger) async throws -> ServiceTerm??
}
