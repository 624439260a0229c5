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
