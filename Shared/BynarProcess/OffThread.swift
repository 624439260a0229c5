#if canImport(Glibc)
import Glibc
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

/// The one way Bynar runs blocking work (librados calls, smartctl, fsck, mkfs, waits of
/// minutes): on a thread of its own, so it never occupies one of Swift concurrency's few
/// cooperative threads (on a 2-core host there are 2; the bus's consumers need them).
public func offThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let work = Work { continuation.resume(with: Result { try body() }) }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        var thread = pthread_t()
        let context = Unmanaged.passRetained(work).toOpaque()
        let created = pthread_create(&thread, &attributes, { raw in
            let work = Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue()
            work.run()
            return nil
        }, context)
        pthread_attr_destroy(&attributes)
        if created != 0 {
            Unmanaged<Work>.fromOpaque(context).release()
            continuation.resume(throwing: ThreadStartError(code: created))
        }
    }
}
