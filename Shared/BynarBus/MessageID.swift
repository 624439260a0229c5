import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Time-ordered (version 7, RFC 9562) UUIDs for message ids and correlation data, in
/// lowercase text form: 48 bits of Unix milliseconds, then 74 random bits.
///
/// The random bits come from the kernel's CSPRNG (`/dev/urandom`), read 4 KiB at a time: ids
/// and correlation data must be unpredictable (an observer who could predict the next id
/// could answer a request it was never sent; 74 bits cannot be guessed), and one system call
/// per 256 ids keeps it cheap at tens of thousands of messages a second. (Before:
/// xoshiro256**, whose state six observed ids gave away.) The time comes first so each
/// store's outbox index on the message id grows at its end: with random (version 4) ids every
/// message written or deleted touched another index page, and a batch's commit wrote as many
/// pages as it had messages (the orchestrator's commits and its outbox's deletes took about
/// 40% longer per message, docs/performance.md).
/// Ids of one millisecond are not ordered among themselves, and need not be.
final class MessageIDGenerator: Sendable {
    private static let batch = 4096
    private let state = Mutex<(bytes: [UInt8], offset: Int)>(([], 0))
    /// The kernel's CSPRNG, opened once (close-on-exec: no tool inherits it).
    private static let urandom: Int32 = {
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0, "cannot open /dev/urandom: \(String(cString: strerror(errno)))")
        return fd
    }()

    init() {}

    /// 16 fresh random bytes.
    private func randomBytes() -> [UInt8] {
        state.withLock { state in
            if state.offset + 16 > state.bytes.count {
                var fresh = [UInt8](repeating: 0, count: Self.batch)
                var filled = 0
                while filled < fresh.count {
                    let count = fresh.withUnsafeMutableBytes { read(Self.urandom, $0.baseAddress! + filled, $0.count - filled) }
                    if count > 0 { filled += count } else if errno != EINTR { fatalError("cannot read /dev/urandom: \(String(cString: strerror(errno)))") }
                }
                state = (fresh, 0)
            }
            defer { state.offset += 16 }
            return Array(state.bytes[state.offset..<(state.offset + 16)])
        }
    }

    func next() -> String {
        var bytes = randomBytes()
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let ms = UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
        for index in 0..<6 { bytes[index] = UInt8(truncatingIfNeeded: ms >> (8 * (5 - index))) }
        bytes[6] = (bytes[6] & 0x0f) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80  // RFC 4122 variant
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(36)
        for (index, byte) in bytes.enumerated() {
            if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
            text.append(hex[Int(byte >> 4)])
            text.append(hex[Int(byte & 0x0f)])
        }
        return String(decoding: text, as: UTF8.self)
    }

}
