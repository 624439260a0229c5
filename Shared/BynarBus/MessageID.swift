import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Random (version 4) UUIDs for message ids, in lowercase text form.
///
/// Foundation's UUID() asks the kernel for randomness on every call (a getrandom syscall on
/// glibc 2.36); at tens of thousands of messages a second that shows. Here a xoshiro256**
/// generator seeded once from the kernel makes the bytes: ids need to be unique, not secret.
final class MessageIDGenerator: Sendable {
    private let state: Mutex<(UInt64, UInt64, UInt64, UInt64)>

    init() {
        var seed = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var generator = SystemRandomNumberGenerator()
        while seed == (0, 0, 0, 0) {
            seed = (generator.next(), generator.next(), generator.next(), generator.next())
        }
        state = Mutex(seed)
    }

    func next() -> String {
        let (high, low) = state.withLock { s -> (UInt64, UInt64) in
            (Self.step(&s), Self.step(&s))
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<8 {
            bytes[index] = UInt8(truncatingIfNeeded: high >> (56 - 8 * index))
            bytes[8 + index] = UInt8(truncatingIfNeeded: low >> (56 - 8 * index))
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40  // version 4
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

    private static func step(_ s: inout (UInt64, UInt64, UInt64, UInt64)) -> UInt64 {
        let result = rotate(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = rotate(s.3, 45)
        return result
    }

    private static func rotate(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
}
