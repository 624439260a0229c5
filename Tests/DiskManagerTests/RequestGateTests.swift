import DiskManager
import Testing

struct RequestGateTests {
    typealias Request = RequestGate.Request

    func request(_ id: String, _ disk: String = "d1", _ kind: Request.Kind = .remove, simulate: Bool = false, deadline: Int64 = 10_000, system: Bool = false, excluded: Bool = false) -> Request {
        Request(requestID: id, diskKey: disk, kind: kind, simulate: simulate, deadlineUnixMs: deadline, systemDisk: system, excluded: excluded)
    }

    @Test func theSameRequestIDActsOnce() {
        var gate = RequestGate(maxDisksOut: 2)
        #expect(gate.received(request("r1"), nowMs: 0) == .start)
        #expect(gate.received(request("r1"), nowMs: 1) == .refuse("request r1 is still in progress"))
        gate.finished(requestID: "r1", outcome: .success)
        #expect(gate.received(request("r1"), nowMs: 2) == .alreadyDone(.success))
        #expect(gate.disksOut == ["d1"])
    }

    @Test func oneOperationPerDisk() {
        var gate = RequestGate(maxDisksOut: 5)
        #expect(gate.received(request("r1", "d1", .remove), nowMs: 0) == .start)
        #expect(gate.received(request("r2", "d1", .add), nowMs: 0) == .refuse("d1 is busy with request r1"))
        #expect(gate.received(request("r3", "d2", .remove), nowMs: 0) == .start, "another disk is free")
        #expect(gate.received(request("r4", "", .list), nowMs: 0) == .start, "listing needs no disk")
        gate.finished(requestID: "r1", outcome: .failed)
        #expect(gate.received(request("r2", "d1", .add), nowMs: 0) == .start, "a refused-as-busy request may come again")
        #expect(gate.disksOut.isEmpty, "a failed remove leaves the disk in")
    }

    @Test func neverSystemOrExcludedDisks() {
        var gate = RequestGate(maxDisksOut: 5)
        #expect(gate.received(request("r1", "root", .remove, system: true), nowMs: 0) == .refuse("root is a system disk; it is never touched"))
        #expect(gate.received(request("r2", "x", .deploy, excluded: true), nowMs: 0) == .refuse("x is excluded by configuration"))
        #expect(gate.received(request("r3", "root", .safeToRemove, system: true), nowMs: 0) == .refuse("root is a system disk; it is never touched"))
        #expect(gate.received(request("r1", "root", .remove, system: true), nowMs: 1) == .alreadyDone(.refused))
    }

    @Test func hostLimitOnDisksOut() {
        var gate = RequestGate(maxDisksOut: 2)
        for (id, disk) in [("r1", "d1"), ("r2", "d2")] {
            #expect(gate.received(request(id, disk), nowMs: 0) == .start)
            gate.finished(requestID: id, outcome: .success)
        }
        #expect(gate.received(request("r3", "d3"), nowMs: 0) == .refuse("2 of this host's disks are out already; the limit is 2"))
        // Simulated removes are judged the same way...
        #expect(gate.received(request("r4", "d4", simulate: true), nowMs: 0) == .refuse("2 of this host's disks are out already; the limit is 2"))
        // ...and adding one back makes room.
        #expect(gate.received(request("r5", "d1", .add), nowMs: 0) == .start)
        gate.finished(requestID: "r5", outcome: .success)
        #expect(gate.received(request("r6", "d3"), nowMs: 0) == .start)
    }

    @Test func simulationsHoldNothingAndCountNothing() {
        var gate = RequestGate(maxDisksOut: 1)
        #expect(gate.received(request("s1", "d1", simulate: true), nowMs: 0) == .start)
        #expect(gate.received(request("r1", "d1"), nowMs: 0) == .start, "a simulation does not hold the disk")
        gate.finished(requestID: "s1", outcome: .success)
        #expect(gate.disksOut.isEmpty, "a simulated remove takes nothing out")
    }

    @Test func lateRequestsAreNotStarted() {
        var gate = RequestGate(maxDisksOut: 1)
        #expect(gate.received(request("r1", deadline: 100), nowMs: 150)
                == .refuse("deadline passed 50 ms ago by this host's clock (allowed clock skew 0 ms); not started"))
        #expect(gate.received(request("r2", deadline: 0), nowMs: 150) == .start, "no deadline given")
    }

    @Test func aSenderBehindByLessThanTheAllowedSkewIsServed() {
        var gate = RequestGate(maxDisksOut: 1, allowedSkewMs: 30_000)
        #expect(gate.received(request("r1", deadline: 100), nowMs: 30_100) == .start, "30 s late by this clock: within the skew")
        #expect(gate.received(request("r2", deadline: 100), nowMs: 30_101)
                == .refuse("deadline passed 30001 ms ago by this host's clock (allowed clock skew 30000 ms); not started"))
    }
}

/// Remove's wait for safe-to-destroy follows the drain: it goes on while PGs or objects
/// leave the OSD, and gives up only after a stall (or the overall limit).
@Suite struct DrainWatchTests {
    typealias State = CephBackend.DrainState

    @Test func aMovingDrainIsFollowedPastTheStallTime() {
        var watch = DrainWatch(osd: 3, overallMs: nil, stallMs: 1_000)
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 10, objectsToMove: 500), atMs: 0) == .wait(news: "10 PGs still on it, 500 objects to move", upToMs: 1_000))
        // Three stall periods long, moving all the while.
        for (index, objects) in stride(from: 450, through: 50, by: -50).enumerated() {
            let at = Int64(index + 1) * 600
            #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 10, objectsToMove: objects), atMs: at) == .wait(news: "10 PGs still on it, \(objects) objects to move", upToMs: 1_000))
        }
        #expect(watch.observe(safe: true, detail: "", drain: nil, atMs: 6_000) == .done)
    }

    @Test func aStalledDrainGivesUpAfterTheStallTimeSayingWhatIsLeft() {
        var watch = DrainWatch(osd: 3, overallMs: nil, stallMs: 1_000)
        _ = watch.observe(safe: false, detail: "", drain: State(pgs: 4, objectsToMove: 80), atMs: 0)
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 2, objectsToMove: 80), atMs: 800) == .wait(news: "2 PGs still on it, 80 objects to move", upToMs: 1_000))
        // Back up (a PG remapped) is not progress; neither is the same.
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 3, objectsToMove: 90), atMs: 1_200) == .wait(news: nil, upToMs: 600))
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 2, objectsToMove: 80), atMs: 1_700) == .wait(news: nil, upToMs: 100))
        guard case .giveUp(let why) = watch.observe(safe: false, detail: "safe_to_destroy=[]", drain: State(pgs: 2, objectsToMove: 80), atMs: 1_800) else {
            Issue.record("a stalled drain must give up")
            return
        }
        #expect(why.contains("no data moved off osd.3 for 1 s") && why.contains("2 PGs still on it, 80 objects to move") && why.contains("safe_to_destroy=[]"), "\(why)")
    }

    @Test func theOverallLimitHoldsHoweverItMoves() {
        var watch = DrainWatch(osd: 1, overallMs: 2_000, stallMs: 1_000)
        _ = watch.observe(safe: false, detail: "", drain: State(pgs: 9, objectsToMove: 900), atMs: 0)
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 8, objectsToMove: 800), atMs: 900) == .wait(news: "8 PGs still on it, 800 objects to move", upToMs: 1_000))
        #expect(watch.observe(safe: false, detail: "", drain: State(pgs: 7, objectsToMove: 700), atMs: 1_800) == .wait(news: "7 PGs still on it, 700 objects to move", upToMs: 200))
        guard case .giveUp(let why) = watch.observe(safe: false, detail: "", drain: State(pgs: 6, objectsToMove: 600), atMs: 2_000) else {
            Issue.record("the overall limit must hold")
            return
        }
        #expect(why.contains("after 2 s in all"), "\(why)")
        // No listing at all (an old release, a mon away): the stall counts from the start.
        var blind = DrainWatch(osd: 1, overallMs: nil, stallMs: 500)
        #expect(blind.observe(safe: false, detail: "", drain: nil, atMs: 0) == .wait(news: nil, upToMs: 500))
        if case .giveUp = blind.observe(safe: false, detail: "", drain: nil, atMs: 500) {} else { Issue.record("a blind wait gives up after the stall time") }
    }
}
