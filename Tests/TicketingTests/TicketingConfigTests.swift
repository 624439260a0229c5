import BynarConfig
import Testing

/// The ticketing section loads with its defaults and rejects unknown keys.
@Suite struct TicketingConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        _ = try ConfigLoader.parse(#"{"ticketing": {}}"#)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"ticketing": {"no_such_key": 1}}"#) }
    }
}
