import BynarProcess
import Foundation
import Testing

/// `Tool.run`: every external tool runs in its own process group, and a timeout kills the
/// whole group: a grandchild (what ceph-volume or mkfs start) does not keep running after
/// the job is marked failed.
struct ToolTests {
    @Test func aTimeoutKillsTheToolsGrandchildrenToo() throws {
        let marker = "/tmp/bynar-tool-test-\(getpid())"
        defer { unlink(marker) }
        // The grandchild writes the marker after 3 s unless it is killed first.
        let command = ["/bin/sh", "-c", "(sleep 3; touch \(marker)) & echo $!; wait"]
        do {
            _ = try Tool.run(command, timeout: .seconds(1))
            Issue.record("the tool should have timed out")
        } catch {
            #expect("\(error)".contains("did not finish within"), "\(error)")
        }
        usleep(4_000_000)
        #expect(access(marker, F_OK) != 0, "the grandchild was killed with its group")
    }

    @Test func aToolHasItsOwnProcessGroup() throws {
        let run = try Tool.run(["/bin/sh", "-c", "ps -o pgid= -p $$"], timeout: .seconds(10))
        let group = Int32(run.text.filter(\.isNumber)) ?? 0
        #expect(group != getpgrp(), "not the caller's group: \(run.text)")
    }

    @Test func aToolInheritsNeitherDescriptorsNorBynarSecrets() throws {
        let leaked = open("/dev/null", O_RDONLY)  // no close-on-exec, like a library's socket
        defer { close(leaked) }
        setenv("BYNAR_BROKER__PASSWORD", "s3cret", 1)
        defer { unsetenv("BYNAR_BROKER__PASSWORD") }
        let fds = try Tool.run(["/bin/sh", "-c", "test -e /proc/$$/fd/\(leaked) && echo LEAKED || echo CLEAN"], timeout: .seconds(10))
        #expect(fds.text.contains("CLEAN"), "descriptor \(leaked) reached the tool: \(fds.text)")
        let environment = try Tool.run(["/usr/bin/env"], timeout: .seconds(10))
        #expect(!environment.text.contains("BYNAR_"), "\(environment.text)")
        #expect(environment.text.contains("PATH="))
    }
}

/// A service killed with -9 leaves its tools running (they have their own process groups);
/// its next start kills them, group and all, before a resumed job could race them; never a
/// process that merely got a recorded pid, and never the tool of a service still alive.
@Suite(.serialized) struct ToolGroupsTests {
    @Test func theNextStartKillsTheToolsAKilledRunLeftBehind() throws {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = ToolGroups.adopt(directory: directory)
        // A tool with a child of its own, as mkfs or ceph-volume have; never reaped here,
        // as if the service had died while it ran.
        let (pid, _) = try Tool.spawn(["/bin/sh", "-c", "sleep 300 & wait"])
        defer { Tool.reap(pid, kill: true) }
        let record = try String(contentsOfFile: "\(directory)/\(pid)", encoding: .utf8)
        #expect(ToolGroups.adopt(directory: directory).isEmpty, "this process, its recorder, is alive: not a leftover")
        // Its recorder dead: the record names a process that has exited.
        let (dead, _) = try Tool.spawn(["/bin/true"])
        Tool.reap(dead, kill: false)
        let fields = record.split(separator: " ")
        try "\(fields[0]) \(dead) \(fields[2])".write(toFile: "\(directory)/\(pid)", atomically: false, encoding: .utf8)
        usleep(200_000)
        let killed = ToolGroups.adopt(directory: directory)
        #expect(killed == ["pid \(pid) (sh)"], "\(killed)")
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid && status & 0x7f == SIGKILL, "killed by SIGKILL")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        // The grandchild (same group) is gone too.
        let sleeping = try FileManager.default.contentsOfDirectory(atPath: "/proc").filter { Int32($0) != nil }.filter { name in
            let stat = (try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8)) ?? ""
            return stat.contains("(sleep)") && stat.split(separator: ")").last?.split(separator: " ").dropFirst(2).first == Substring("\(pid)")
        }
        #expect(sleeping.isEmpty, "the tool's own child was killed with its group: \(sleeping)")
    }

    @Test func aReusedPidIsNeverKilled() throws {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = ToolGroups.adopt(directory: directory)
        let (pid, _) = try Tool.spawn(["/bin/sleep", "300"])
        defer { Tool.reap(pid, kill: true) }
        // The record says another process (another start time) had this pid, recorded by one long gone.
        try "1 999999999 1".write(toFile: "\(directory)/\(pid)", atomically: false, encoding: .utf8)
        #expect(ToolGroups.adopt(directory: directory).isEmpty)
        #expect(kill(pid, 0) == 0, "still running")
    }

    func makeDirectory() throws -> String {
        let path = "/tmp/bynar-toolgroups-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
