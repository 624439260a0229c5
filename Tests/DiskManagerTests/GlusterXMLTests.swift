@testable import DiskManager
import Testing

/// The parser and the SafeToRemove rules on gluster 10.3's own output (``GlusterFixtures``).
@Suite struct GlusterXMLTests {
    let b1 = "vm:/tmp/gl/b1/brick", b2 = "vm:/tmp/gl/b2/brick", b3 = "vm:/tmp/gl/b3/brick"

    @Test func volumeInfoOfAReplicaAndADisperseVolume() throws {
        let replica = try #require(try GlusterVolume.parseInfo(GlusterFixtures.volumeInfoReplica3).first)
        #expect(replica == GlusterVolume(name: "gv0", status: "Started", type: "Replicate", replicaCount: 3, disperseCount: 0, redundancyCount: 0, bricks: [b1, b2, b3]))
        #expect(replica.setSize == 3 && replica.redundant && replica.othersMayBeOffline == 0)
        #expect(replica.set(of: b2) == [b1, b2, b3] && replica.set(of: "vm:/elsewhere").isEmpty)
        let disperse = try #require(try GlusterVolume.parseInfo(GlusterFixtures.volumeInfoDisperse).first)
        #expect(disperse.type == "Disperse" && disperse.status == "Created" && disperse.setSize == 3 && disperse.redundant && disperse.othersMayBeOffline == 0)
        #expect(disperse.bricks == ["vm:/tmp/gl/e1/brick", "vm:/tmp/gl/e2/brick", "vm:/tmp/gl/e3/brick"])
    }

    @Test func setsOfADistributedReplicateVolume() {
        let volume = GlusterVolume(name: "v", status: "Started", type: "Distributed-Replicate", replicaCount: 2, disperseCount: 0, redundancyCount: 0, bricks: ["h:/a", "h:/b", "h:/c", "h:/d"])
        #expect(volume.set(of: "h:/c") == ["h:/c", "h:/d"] && volume.set(of: "h:/b") == ["h:/a", "h:/b"])
    }

    @Test func statusSaysWhichBricksAreOnlineAndSkipsDaemons() throws {
        #expect(try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusAllUp) == [b1: true, b2: true, b3: true])
        #expect(try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusOneDown) == [b1: false, b2: true, b3: true])
        #expect(try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusTwoDown) == [b1: false, b2: false, b3: true])
        #expect(throws: GlusterParseError("gluster said: Volume ev0 does not exist")) { try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusNoSuchVolume) }
    }

    @Test func healInfoCountsAndUnreachedBricks() throws {
        let clean = try GlusterHealInfo.parse(GlusterFixtures.healInfoClean)
        #expect(clean.bricks.map(\.pending) == [0, 0, 0] && clean.bricks.map(\.status) == ["Connected", "Connected", "Connected"])
        let oneDown = try GlusterHealInfo.parse(GlusterFixtures.healInfoOneDown)
        #expect(oneDown.brick(b1) == .init(name: b1, status: "Transport endpoint is not connected", pending: nil))
        #expect(oneDown.brick(b2)?.pending == 3 && oneDown.brick(b3)?.pending == 3)
        #expect(oneDown.brick(b2)?.entries == ["67c26be4-3d44-4647-82a8-b2b47995f19b", "00000000-0000-0000-0000-000000000001", "cdd50d37-fd12-44f2-a5dd-cb56c8b9b8f9"])
        #expect(GlusterSafety.pending(in: [b1, b2, b3], heal: oneDown) == 6)
        #expect(GlusterSafety.pending(in: [b1], heal: oneDown) == nil)
    }

    @Test func malformedTextIsAnErrorNotAnEmptyAnswer() throws {
        #expect(throws: GlusterParseError.self) { try XMLElement.parse("<a><b></a>") }
        #expect(throws: GlusterParseError.self) { try XMLElement.parse("<a>") }
        #expect(throws: GlusterParseError.self) { try XMLElement.parse("volume info: failed") }
        #expect(throws: GlusterParseError.self) { try GlusterVolume.parseInfo("<cliOutput><opRet>0</opRet></cliOutput>") }
        #expect(try XMLElement.parse("<a x=\"1 &amp; 2\"><b>&lt;c&gt;</b><d/></a>") == XMLElement(name: "a", attributes: ["x": "1 & 2"], children: [XMLElement(name: "b", text: "<c>"), XMLElement(name: "d")]))
    }

    @Test func safeWhenTheOthersAreOnlineWithNothingPending() throws {
        let volume = try #require(try GlusterVolume.parseInfo(GlusterFixtures.volumeInfoReplica3).first)
        // Brick 1 dead, nothing written since: safe.
        let heal = try GlusterHealInfo.parse(GlusterFixtures.healInfoClean)
        let answer = GlusterSafety.decide(brick: b1, volume: volume, online: try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusOneDown), heal: heal)
        #expect(answer.safe && answer.detail.contains("2 other bricks"), "\(answer)")
    }

    /// The normal case of a disk that died under a volume in use: the volume was written to
    /// after brick 1 went down, so bricks 2 and 3 list the same entries waiting for it
    /// (captured from glusterd 10.3). Taking brick 1 out loses nothing.
    @Test func safeWhenTheOthersListTheSameEntriesWaitingForTheDeadBrick() throws {
        let volume = try #require(try GlusterVolume.parseInfo(GlusterFixtures.volumeInfoReplica3).first)
        let online = try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusOneDown)
        let heal = try GlusterHealInfo.parse(GlusterFixtures.healInfoOneDown)
        let answer = GlusterSafety.decide(brick: b1, volume: volume, online: online, heal: heal)
        #expect(answer.safe && answer.detail.contains("the 3 entries they list pending heal are the same on each, waiting for \(b1) (down)"), "\(answer)")
        // Brick 3 lacks one of brick 2's entries: brick 3 may be behind on it; not safe.
        var disagreeing = heal
        disagreeing.bricks[2].entries.remove("cdd50d37-fd12-44f2-a5dd-cb56c8b9b8f9")
        disagreeing.bricks[2].pending = 2
        let split = GlusterSafety.decide(brick: b1, volume: volume, online: online, heal: disagreeing)
        #expect(!split.safe && split.detail.contains("do not list the same entries"), "\(split)")
    }

    @Test func notSafeWithASecondBrickDownOrEntriesPending() throws {
        let volume = try #require(try GlusterVolume.parseInfo(GlusterFixtures.volumeInfoReplica3).first)
        let twoDown = GlusterSafety.decide(brick: b1, volume: volume, online: try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusTwoDown), heal: try GlusterHealInfo.parse(GlusterFixtures.healInfoTwoDown))
        #expect(!twoDown.safe && twoDown.detail.contains("\(b2) of \(b1)'s replica set is offline"), "\(twoDown)")
        // Brick 3 when brick 1 is down and files were written meanwhile: brick 2 holds entries to heal.
        let pending = GlusterSafety.decide(brick: b3, volume: volume, online: try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusOneDown), heal: try GlusterHealInfo.parse(GlusterFixtures.healInfoOneDown))
        #expect(!pending.safe && pending.detail.contains("\(b1) of \(b3)'s replica set is offline"), "\(pending)")
        let allUpButPending = GlusterSafety.decide(brick: b1, volume: volume, online: try GlusterStatus.parseOnline(GlusterFixtures.volumeStatusAllUp), heal: try GlusterHealInfo.parse(GlusterFixtures.healInfoOneDown))
        #expect(!allUpButPending.safe && allUpButPending.detail.contains("\(b2) has 3 entries pending heal"), "\(allUpButPending)")
        let unknown = GlusterSafety.decide(brick: b1, volume: volume, online: [b1: true, b2: true, b3: true], heal: nil)
        #expect(!unknown.safe)
        let unreached = GlusterSafety.decide(brick: b2, volume: volume, online: [b1: true, b2: true, b3: true], heal: try GlusterHealInfo.parse(GlusterFixtures.healInfoOneDown))
        #expect(!unreached.safe && unreached.detail.contains("\(b1) not reached by heal info"), "\(unreached)")
    }

    @Test func disperseToleratesItsRedundancyAndDistributeNothing() {
        let disperse = GlusterVolume(name: "ev", status: "Started", type: "Disperse", replicaCount: 1, disperseCount: 4, redundancyCount: 2, bricks: ["h:/1", "h:/2", "h:/3", "h:/4"])
        let heal = GlusterHealInfo(bricks: ["h:/1", "h:/2", "h:/3", "h:/4"].map { .init(name: $0, status: "Connected", pending: 0) })
        #expect(GlusterSafety.decide(brick: "h:/1", volume: disperse, online: ["h:/2": false, "h:/3": true, "h:/4": true], heal: heal).safe)
        #expect(!GlusterSafety.decide(brick: "h:/1", volume: disperse, online: ["h:/2": false, "h:/3": false, "h:/4": true], heal: heal).safe)
        let distribute = GlusterVolume(name: "dv", status: "Started", type: "Distribute", replicaCount: 1, disperseCount: 0, redundancyCount: 0, bricks: ["h:/1", "h:/2"])
        let alone = GlusterSafety.decide(brick: "h:/1", volume: distribute, online: ["h:/1": true, "h:/2": true], heal: heal)
        #expect(!alone.safe && alone.detail.contains("without redundancy"), "\(alone)")
        let stopped = GlusterVolume(name: "sv", status: "Stopped", type: "Replicate", replicaCount: 3, disperseCount: 0, redundancyCount: 0, bricks: ["h:/1"])
        #expect(GlusterSafety.decide(brick: "h:/1", volume: stopped, online: [:], heal: nil).safe)
    }
}
