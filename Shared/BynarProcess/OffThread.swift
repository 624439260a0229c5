#if canImport(Glibc)
public import Glibc
#endif

private final class Work: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// A worker thread could not be started.
public struct ThreadStartError: Error, CustomStringConvertible {
    public let code: Int32
    public var description: String { "cannot start a worker thread: \(String(cString: strerror(code)))" }
}

/// The one way Bynar runs blocking work (librados calls, smartctl, fsck, mkfs, hooks, waits
/// of minutes): on a thread of its own, so it never occupies one of Swift concurrency's few
/// cooperative threads (on a 2-core host there are 2; the bus's consumers need them).
/// Nothing in Bynar blocks inside `Task.detached` or a Dispatch queue.
public func offThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        do {
            try startThread { continuation.resume(with: Result { try body() }) }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

/// Starts `body` on a thread of its own and returns at once: for work that blocks for a long
/// or unknown time and is not awaited (the kernel log and uevent readers, which block for
/// the service's life; a read probe that may hang in the kernel). ``offThread(_:)`` is
/// built on it. A `joinable` thread must be joined (`pthread_join`); the others end alone.
@discardableResult
public func startThread(joinable: Bool = false, _ body: @escaping @Sendable () -> Void) throws(ThreadStartError) -> pthread_t {
    let work = Work(body)
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(joinable ? PTHREAD_CREATE_JOINABLE : PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let context = Unmanaged.passRetained(work).toOpaque()
    let created = pthread_create(&thread, &attributes, { raw in
        let work = Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue()
        work.run()
        return nil
    }, context)
    guard created == 0 else {
        Unmanaged<Work>.fromOpaque(context).release()
        throw ThreadStartError(code: created)
    }
    return thread
}
