/// FNV-1a (64-bit): a hash that is the same in every process and on every machine (Swift's
/// `hashValue` is seeded per run), for names built from data: topic levels cut short,
/// incident ids, idempotency keys.
public enum StableHash {
    public static func fnv1a(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return hash
    }

    /// ``fnv1a(_:)`` of `text`'s UTF-8, in hexadecimal.
    public static func hex(_ text: String) -> String { String(fnv1a(text.utf8), radix: 16) }
}
