// Block device hot-plug events straight from the kernel (the uevent netlink socket), so the
// detector notices disks coming and going without udevd. A dedicated thread reads the socket
// and feeds a bounded AsyncStream; the thread polls with a short timeout so `stop()` can
// end it without closing a socket another thread is blocked on.

import Glibc
import Synchronization
import BynarProcess

/// One kernel uevent for a block device.
public struct BlockEvent: Sendable, Equatable {
    /// What happened to the device.
    public enum Action: Sendable, Equatable {
        case add
        case remove
        /// Something about the device changed: for a loop device, attach and detach
        /// (its size or medium), for a disk a partition table reread or a resize.
        case change
        /// Any other action the kernel sends ("move", "online", "offline", …).
        case other(String)
    }

    /// Whether the event is about a whole disk or a partition.
    public enum DeviceType: Sendable, Equatable {
        case disk
        case partition
        /// A devtype the kernel may add later.
        case other(String)
    }

    /// What happened.
    public var action: Action
    /// The device node ("/dev/sdc").
    public var devName: String
    /// The kernel name ("sdc").
    public var sysName: String
    /// Whole disk or partition.
    public var deviceType: DeviceType
    /// The device's major:minor (also in the mount table and /proc/swaps' stat()).
    public var devNumber: DeviceNumber
    /// The kernel's uevent sequence number (increases by one per uevent, all subsystems).
    public var sequenceNumber: UInt64
    /// Every key the kernel sent (e.g. "DISK_MEDIA_CHANGE" = "1", "PARTN", "DISKSEQ").
    public var properties: [String: String]

    /// An event as given.
    public init(action: Action, devName: String, sysName: String, deviceType: DeviceType, devNumber: DeviceNumber, sequenceNumber: UInt64 = 0, properties: [String: String] = [:]) {
        self.action = action
        self.devName = devName
        self.sysName = sysName
        self.deviceType = deviceType
        self.devNumber = devNumber
        self.sequenceNumber = sequenceNumber
        self.properties = properties
    }

    init(_ event: UdevEvent) {
        switch event.action {
        case "add": action = .add
        case "remove": action = .remove
        case "change": action = .change
        default: action = .other(event.action)
        }
        switch event.devType {
        case "disk": deviceType = .disk
        case "partition": deviceType = .partition
        default: deviceType = .other(event.devType ?? "")
        }
        sysName = event.sysname
        devName = event.devNode ?? "/dev/" + (event.properties["DEVNAME"] ?? event.sysname)
        devNumber = event.devNumber
        sequenceNumber = event.seqnum
        properties = event.properties
    }
}

/// Listens to the kernel's block device uevents (no udevd needed) until stopped.
///
/// The socket is open when `init` returns: every block uevent from then on reaches `events`,
/// unless the consumer falls more than `bufferSize` events behind, in which case the oldest
/// buffered ones are dropped and counted in `droppedEvents` (a consumer that sees the count
/// grow should rescan rather than trust its picture).
public final class BlockEventMonitor: Sendable {
    /// The events in the order the kernel sent them, for one consumer; finishes after
    /// `stop()`. A consumer that stops iterating also ends the event thread.
    public let events: AsyncStream<BlockEvent>

    private enum State {
        case running(pthread_t)
        case stopped
    }

    private let state: Mutex<State>
    private let worker: Worker

    /// How often the event thread looks at the stop flag while the socket is quiet.
    static let pollInterval: Int32 = 50 // milliseconds

    /// Opens the kernel uevent socket (block subsystem only) and starts the event thread.
    /// Throws when the socket cannot be opened (no netlink in this namespace) or the
    /// thread cannot start.
    public init(bufferSize: Int = 1024) throws {
        let monitor: UdevKernelMonitor
        do {
            monitor = try UdevKernelMonitor(receiveBufferBytes: 4 << 20)
        } catch let error as UdevError {
            throw InventoryError.system(error.description)
        }
        let (stream, continuation) = AsyncStream.makeStream(of: BlockEvent.self, bufferingPolicy: .bufferingNewest(max(bufferSize, 1)))
        let worker = Worker(monitor: monitor, continuation: continuation)
        // A consumer that stops listening ends the thread too; stop() still joins it.
        continuation.onTermination = { [worker] _ in worker.stopRequested.store(true, ordering: .releasing) }
        events = stream
        self.worker = worker

        do {
            state = Mutex(.running(try startThread(joinable: true) { worker.run() }))
        } catch {
            continuation.finish()
            state = Mutex(.stopped)
            throw InventoryError.system("\(error)")
        }
    }

    /// Events lost so far: each one the consumer was too slow for (dropped from the buffer),
    /// plus one for each overflow of the kernel socket (which does not say how many it lost).
    public var droppedEvents: Int { worker.dropped.load(ordering: .relaxed) }

    /// Ends the event thread, closes the socket and finishes `events` (events already
    /// buffered are still delivered). Returns once the thread has ended, within about
    /// 50 ms; calling it again does nothing.
    public func stop() {
        let thread: pthread_t? = state.withLock { state in
            switch state {
            case let .running(thread):
                state = .stopped
                return thread
            case .stopped:
                return nil
            }
        }
        guard let thread else { return }
        worker.stopRequested.store(true, ordering: .releasing)
        pthread_join(thread, nil)
    }

    deinit { stop() }

    /// What the event thread owns. After the thread starts, only it touches `monitor`.
    private final class Worker: Sendable {
        let monitor: UdevKernelMonitor
        let continuation: AsyncStream<BlockEvent>.Continuation
        let stopRequested = Atomic<Bool>(false)
        let dropped = Atomic<Int>(0)

        init(monitor: UdevKernelMonitor, continuation: AsyncStream<BlockEvent>.Continuation) {
            self.monitor = monitor
            self.continuation = continuation
        }

        func run() {
            defer { continuation.finish() }
            while !stopRequested.load(ordering: .acquiring) {
                switch monitor.next(waitMs: BlockEventMonitor.pollInterval) {
                case .event(let event):
                    if case .dropped = continuation.yield(BlockEvent(event)) {
                        dropped.add(1, ordering: .relaxed)
                    }
                case .lost:
                    dropped.add(1, ordering: .relaxed)
                case .quiet, .other:
                    continue
                case .failed:
                    return // the socket is unusable; finishing the stream tells the consumer
                }
            }
        }
    }
}
