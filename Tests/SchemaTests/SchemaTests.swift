import BynarBus
import BynarProto
import BynarTestSupport
import Foundation
import Testing

let protocAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/protoc")
let protocGenSwift = ["\(packageRoot)/.build/debug/protoc-gen-swift", "\(packageRoot)/.build/release/protoc-gen-swift"]
    .first { FileManager.default.isExecutableFile(atPath: $0) }

@Suite(.enabled(if: protocAvailable, "protoc is not installed (apt-get install protobuf-compiler)"))
struct SchemaTests {
    @Test(.enabled(if: protocGenSwift != nil, "protoc-gen-swift not built (scripts/test builds it: swift build --product protoc-gen-swift)"))
    func generatedCodeIsUpToDate() throws {
        let result = try runScript("\(packageRoot)/scripts/gen-proto", ["--check"])
        #expect(result.status == 0, "\(result.output)")
    }

    @Test(.enabled(if: protocGenSwift != nil, "protoc-gen-swift not built"))
    func staleGeneratedCodeIsCaught() throws {
        // A copy of the tree with one field added to a proto: --check must fail.
        let copy = try makeTemporaryDirectory(prefix: "bynar-genproto")
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let manager = FileManager.default
        try manager.createDirectory(atPath: "\(copy)/Shared/BynarProto", withIntermediateDirectories: true)
        for path in ["scripts", "proto", "Shared/BynarProto/Generated"] {
            try manager.copyItem(atPath: "\(packageRoot)/\(path)", toPath: "\(copy)/\(path)")
        }
        let proto = "\(copy)/proto/bynar/v1/notify.proto"
        let text = try String(contentsOfFile: proto, encoding: .utf8)
        try text.replacingOccurrences(of: "  string ticket_url = 8;", with: "  string ticket_url = 8;\n  string runbook_url = 99;")
            .write(toFile: proto, atomically: true, encoding: .utf8)
        let stale = try runScript("\(copy)/scripts/gen-proto", ["--check"])
        #expect(stale.status == 1)
        #expect(stale.output.contains("is stale"))
        // Regenerating fixes it.
        #expect(try runScript("\(copy)/scripts/gen-proto", []).status == 0)
        #expect(try runScript("\(copy)/scripts/gen-proto", ["--check"]).status == 0)
    }

    /// The debugging recipe in docs/topics.md: protoc alone decodes what is on the bus.
    @Test func protocDecodesAnEnvelope() throws {
        var envelope = Envelope()
        envelope.messageID = "5f0c7c1e-0000-4000-8000-000000000001"
        envelope.sourceService = "detector"
        envelope.sourceHost = "store-17"
        envelope.sequence = 7
        var health = Bynar_V1_DiskHealth()
        health.disk.serial = "ZA1B2C3D"
        health.state = .failed
        envelope.payload = health.envelopePayload
        let directory = try makeTemporaryDirectory(prefix: "bynar-decode")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Data(Bus.serialize(envelope)).write(to: URL(fileURLWithPath: "\(directory)/message.bin"))
        let protos = try FileManager.default.contentsOfDirectory(atPath: "\(packageRoot)/proto/bynar/v1").filter { $0.hasSuffix(".proto") }.map { "\(packageRoot)/proto/bynar/v1/\($0)" }
        let process = try ChildProcess("/usr/bin/protoc", ["--decode=bynar.v1.Envelope", "-I", "\(packageRoot)/proto"] + protos,
                                       inputPath: "\(directory)/message.bin", outputPath: "\(directory)/decoded.txt")
        _ = process.waitForExit(timeout: .seconds(30))
        let decoded = try String(contentsOfFile: "\(directory)/decoded.txt", encoding: .utf8)
        #expect(process.exitCode == 0, "\(decoded)")
        #expect(decoded.contains(#"source_host: "store-17""#))
        #expect(decoded.contains("sequence: 7"))
        #expect(decoded.contains("disk_health {"))
        #expect(decoded.contains(#"serial: "ZA1B2C3D""#))
        #expect(decoded.contains("state: DISK_STATE_FAILED"))
    }

    private func runScript(_ script: String, _ arguments: [String]) throws -> (status: Int32?, output: String) {
        let log = "/tmp/bynar-genproto-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try ChildProcess("/bin/bash", [script] + arguments, outputPath: log, environment: ["PROTOC_GEN_SWIFT": protocGenSwift ?? ""])
        _ = process.waitForExit(timeout: .seconds(120))
        return (process.exitCode, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }
}
