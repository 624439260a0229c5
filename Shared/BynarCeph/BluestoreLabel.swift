/// The label BlueStore writes in the first block of every device it uses (main, DB, WAL):
/// who the device belongs to, read from the device itself. Stable where kernel names are
/// not: a new disk that comes up as the old `/dev/sdX` has no label (or another OSD's).
///
/// Layout (Ceph `bluestore_bdev_label_t::encode`): the text `bluestore block device\n`,
/// the OSD's uuid as text and `\n` (60 bytes), then an encoded struct (`u8 version`,
/// `u8 compat`, `u32 length`, the uuid as 16 bytes, `u64 size`, `utime` (8 bytes),
/// `string description`, `map<string,string> meta`), all little-endian. `description` is
/// "main", "bluefs db" or "bluefs wal"; `meta` carries `whoami` (the OSD id) and
/// `ceph_fsid` on the main device.
public struct BluestoreLabel: Sendable, Equatable {
    public static let magic = Array("bluestore block device\n".utf8)

    /// The OSD's uuid, lower-case text ("1b7e…-…").
    public var osdUUID: String
    /// "main", "bluefs db", "bluefs wal" (empty when the struct could not be read).
    public var description: String
    public var meta: [String: String]

    /// The OSD id the label names (`whoami`), when it has one.
    public var whoami: Int? { meta["whoami"].flatMap { Int($0) } }
    /// The cluster the OSD belongs to (`ceph_fsid`), when given.
    public var clusterFSID: String? { meta["ceph_fsid"] }

    public init(osdUUID: String, description: String = "", meta: [String: String] = [:]) {
        self.osdUUID = osdUUID
        self.description = description
        self.meta = meta
    }

    /// The label at the start of `block`, or nil when the block holds no BlueStore label.
    /// A label whose struct is cut short still gives the uuid from its text header.
    public static func parse(_ block: [UInt8]) -> BluestoreLabel? {
        guard block.count >= magic.count + 37, Array(block[0..<magic.count]) == magic else { return nil }
        let uuidBytes = block[magic.count..<(magic.count + 36)]
        guard block[magic.count + 36] == UInt8(ascii: "\n"),
              uuidBytes.allSatisfy({ $0 == UInt8(ascii: "-") || ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        var label = BluestoreLabel(osdUUID: String(decoding: uuidBytes, as: UTF8.self))
        var reader = Reader(bytes: block, offset: magic.count + 37)
        // version, compat, length, uuid (16), size (8), btime (8)
        guard reader.skip(2), let length = reader.u32(), length < 1 << 20, reader.skip(16 + 8 + 8),
              let description = reader.string() else { return label }
        label.description = description
        guard let count = reader.u32(), count < 1000 else { return label }
        for _ in 0..<count {
            guard let key = reader.string(), let value = reader.string() else { break }
            label.meta[key] = value
        }
        return label
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset: Int

        mutating func skip(_ count: Int) -> Bool {
            guard offset + count <= bytes.count else { return false }
            offset += count
            return true
        }

        mutating func u32() -> UInt32? {
            guard offset + 4 <= bytes.count else { return nil }
            defer { offset += 4 }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
        }

        mutating func string() -> String? {
            guard let length = u32().map(Int.init), length <= 4096, offset + length <= bytes.count else { return nil }
            defer { offset += length }
            return String(decoding: bytes[offset..<(offset + length)], as: UTF8.self)
        }
    }
}
