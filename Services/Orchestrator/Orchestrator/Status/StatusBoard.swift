import BynarProto
import Synchronization

/// What the status page shows that the journal does not hold: membership as last published
/// (the retained HostStates), the detectors' latest health of every disk the orchestrator
/// remembers, and the latest hook results. The orchestrator's tasks write it as they go; the page's thread takes a
/// copy under the lock, so neither waits on the other for more than that copy.
final class StatusBoard: Sendable {
    struct Contents: Sendable {
        /// Host → its latest HostState.
        var hosts: [String: Bynar_V1_HostState] = [:]
        /// "host/key" → the detector's latest health of the disk.
        var disks: [String: Bynar_V1_DiskHealth] = [:]
        /// The latest hook results, newest last (at most ``StatusBoard/hookResultsKept``).
        var hooks: [Bynar_V1_HookResult] = []
    }

    /// How many hook results the page shows.
    static let hookResultsKept = 20

    private let contents = Mutex(Contents())

    init() {}

    var copy: Contents { contents.withLock { $0 } }

    func noteHost(_ state: Bynar_V1_HostState) {
        contents.withLock { $0.hosts[state.host] = state }
    }

    /// The disks the orchestrator remembers, as its core decided (``RepairCore/Effects/disks``):
    /// bounded as its memory is, and a disk that left its slot leaves the page.
    func noteDisks(_ changes: [(key: String, health: Bynar_V1_DiskHealth?)]) {
        contents.withLock { contents in
            for (key, health) in changes { contents.disks[key] = health }
        }
    }

    func noteHook(_ result: Bynar_V1_HookResult) {
        contents.withLock { contents in
            contents.hooks.append(result)
            if contents.hooks.count > Self.hookResultsKept { contents.hooks.removeFirst(contents.hooks.count - Self.hookResultsKept) }
        }
    }
}
