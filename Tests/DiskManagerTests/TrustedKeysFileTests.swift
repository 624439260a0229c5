import BynarAuth
import BynarTestSupport
import Foundation
import Testing

/// The trusted-keys file read again when it changes; a bad one refused, the old keys kept.
@Suite struct TrustedKeysFileTests {
    @Test func readsAChangedFileAndRefusesABadOne() throws {
        let directory = try makeTemporaryDirectory(prefix: "bynar-keys")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/trusted-keys"
        let a = try KeyFiles.generate(keyID: "a"), b = try KeyFiles.generate(keyID: "b")
        try keyFile(a.trustedKeysLine).write(toFile: path, atomically: true, encoding: .utf8)
        let file = try TrustedKeysFile(path: path)
        #expect(file.keys.keyIDs == ["a"] && file.reloadIfChanged() == .unchanged)
        try keyFile(a.trustedKeysLine, b.trustedKeysLine).write(toFile: path, atomically: true, encoding: .utf8)
        #expect(file.reloadIfChanged() == .reloaded(added: ["b"], removed: []))
        #expect(file.keys.keyIDs == ["a", "b"] && file.reloadIfChanged() == .unchanged)
        try keyFile(a.trustedKeysLine, "b ed25519 not-base64!").write(toFile: path, atomically: true, encoding: .utf8)
        guard case .refused(let why) = file.reloadIfChanged() else { Issue.record("a bad file was taken"); return }
        #expect(why.contains("line 2"), "\(why)")
        #expect(file.keys.keyIDs == ["a", "b"], "the old keys stay")
        #expect(file.reloadIfChanged() == .unchanged, "refused once per change")
        try keyFile(b.trustedKeysLine).write(toFile: path, atomically: true, encoding: .utf8)
        #expect(file.reloadIfChanged() == .reloaded(added: [], removed: ["a"]))
        // Removed: refused, old keys kept.
        try FileManager.default.removeItem(atPath: path)
        guard case .refused = file.reloadIfChanged() else { Issue.record("a missing file was taken"); return }
        #expect(file.keys.keyIDs == ["b"])
    }
}

/// A trusted-keys file's text: one line each.
func keyFile(_ lines: String...) -> String {
    lines.map { $0.hasSuffix("\n") ? $0 : $0 + "\n" }.joined()
}
