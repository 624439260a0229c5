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
