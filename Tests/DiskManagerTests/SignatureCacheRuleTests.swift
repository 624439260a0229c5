@testable import DiskManager
import Testing

/// The rule that decides when a kept `blkid -p` answer is still the disk's
/// (``SignatureCache/Entry/answers(_:at:)``), one field at a time; no disks needed.
@Suite struct SignatureCacheRuleTests {
    typealias Stamp = SignatureCache.Stamp
    static let second: Int64 = 1_000_000_000
    static let probed: Int64 = 1_800_000_000 * second

    static let stamp = Stamp(
        size: 314_572_800, writes: ["10", "800", "1", "2048"],
        node: .init(device: 0x700, inode: 11, size: 0, modifiedNs: probed - 5 * second, changedNs: probed - 5 * second),
        backing: .init(device: 0xfe00, inode: 99, size: 314_572_800, modifiedNs: probed - 9 * second, changedNs: probed - 9 * second)
    )

    static func entry(_ stamp: Stamp = stamp) -> SignatureCache.Entry {
        .init(stamp: stamp, probe: .found(["TYPE": "ext4", "UUID": "u1"]), probedNs: probed, probedAt: .now)
    }

    @Test func theSameQuietDiskKeepsItsAnswer() {
        #expect(Self.entry().answers(Self.stamp, at: .now))
    }

    @Test("any write, discard, new size, new node or backing file change: probe again")
    func anyChangeProbesAgain() {
        var changes: [(String, (inout Stamp) -> Void)] = [
            ("a write completed", { $0.writes[0] = "11" }),
            ("sectors written", { $0.writes[1] = "808" }),
            ("a discard", { $0.writes[2] = "2" }),
            ("sectors discarded", { $0.writes[3] = "4096" }),
            ("a new size", { $0.size = 629_145_600 }),
            ("a write through the node", { $0.node.modifiedNs += 1 }),
            ("the node's ctime", { $0.node.changedNs += 1 }),
            ("a new node", { $0.node.inode = 12 }),
            ("the backing file written", { $0.backing?.modifiedNs += 1 }),
            ("the backing file resized", { $0.backing?.size += 4096 }),
            ("another backing file", { $0.backing?.inode = 100 }),
        ]
        changes.append(("no backing file any more", { $0.backing = nil }))
        for (what, change) in changes {
            var now = Self.stamp
            change(&now)
            #expect(!Self.entry().answers(now, at: .now), "\(what)")
        }
        #expect(!Self.entry().answers(nil, at: .now), "a stamp that cannot be read")
    }

    @Test("an answer probed within the settle time of the disk's last change is not kept")
    func aProbeTooSoonAfterAWriteIsNotKept() {
        var recent = Self.stamp
        recent.node.modifiedNs = Self.probed - Self.second / 2
        #expect(!Self.entry(recent).answers(recent, at: .now))
        var backing = Self.stamp
        backing.backing?.changedNs = Self.probed - Self.second / 2
        #expect(!Self.entry(backing).answers(backing, at: .now))
        var settled = Self.stamp
        settled.node.modifiedNs = Self.probed - Self.second - 1
        #expect(Self.entry(settled).answers(settled, at: .now))
    }

    @Test func anAnswerIsKeptForFiveMinutesAtMost() {
        let entry = Self.entry()
        #expect(entry.answers(Self.stamp, at: entry.probedAt + .seconds(299)))
        #expect(!entry.answers(Self.stamp, at: entry.probedAt + .seconds(300)))
    }
}
