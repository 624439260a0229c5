import BynarConfig
import Testing

/// The orchestrator section loads with its defaults and rejects unknown keys.
@Suite struct OrchestratorConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        _ = try ConfigLoader.parse(#"{"orchestrator": {}}"#)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"orchestrator": {"no_such_key": 1}}"#) }
    }
}
