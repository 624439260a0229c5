import BynarConfig
import Testing

/// The notifier section loads with its defaults and rejects unknown keys.
@Suite struct NotifierConfigTests {
    @Test func defaultsLoadAndUnknownKeysAreRejected() throws {
        _ = try ConfigLoader.parse(#"{"notifier": {}}"#)
        #expect(throws: (any Error).self) { try ConfigLoader.parse(#"{"notifier": {"no_such_key": 1}}"#) }
    }
}
