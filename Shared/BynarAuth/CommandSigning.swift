import BynarConfig
public import BynarProto
public import BynarStore
public import Crypto
import GRDB
public import SwiftProtobuf
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

// MARK: - Signing

/// Signs disk-manager commands so the disk-manager can tell who asked.
///
/// What is signed, exactly: the request as it will be sent, with `auth.key_id`,
/// `auth.nonce` and `auth.expires_unix_ms` already set and `auth.signature` empty (proto3
/// leaves an empty `bytes` field out of the encoding), serialized with SwiftProtobuf's
/// binary encoder and `BinaryEncodingOptions.useDeterministicOrdering = true`. The
/// signature is Ed25519 over those bytes, put in `auth.signature`.
///
/// So every field is covered — request id, host, deadline, simulate flag, operation and
/// its disk selector, and the key id, nonce and expiry themselves — as are unknown fields
/// a newer sender added. The verifier re-encodes the request it decoded, so a sender in
/// another language must produce the encoding SwiftProtobuf produces (fields in field
/// number order, defaults omitted), which is what protobuf's deterministic mode does for
/// messages without maps.
public enum CommandSigning {
    /// Why a request could not be signed.
    public enum SigningError: Error, Equatable, Sendable, CustomStringConvertible {
        /// A request must carry a key id, or the verifier cannot find the key.
        case emptyKeyID
        /// An empty nonce would make every request from this key a replay of the first.
        case emptyNonce
        /// A command that is already expired, or expires now, is of no use.
        case nonPositiveLifetime
        /// The encoder or the signer failed.
        case failed(String)

        public var description: String {
            switch self {
            case .emptyKeyID: "cannot sign: empty key id"
            case .emptyNonce: "cannot sign: empty nonce"
            case .nonPositiveLifetime: "cannot sign: lifetime must be positive"
            case .failed(let why): "cannot sign: \(why)"
            }
        }
    }

    /// Length of the nonce ``sign(_:keyID:key:lifetime:nowMs:nonce:fence:)`` chooses.
    public static let nonceLength = 16

    /// Returns `request` with `auth` filled in: `keyID`, `nonce` (16 random bytes when
    /// `nil`), expiry `nowMs + lifetime`, and the Ed25519 signature by `key` over
    /// ``signedBytes(_:)`` of the result. Any `auth` the request had is replaced.
    public static func sign<Command: SignedCommand>(
        _ request: Command, keyID: String, key: Curve25519.Signing.PrivateKey,
        lifetime: Duration, nowMs: Int64, nonce: [UInt8]? = nil, fence: CommandSigner.Fence? = nil
    ) throws(SigningError) -> Command {
        guard !keyID.isEmpty else { throw .emptyKeyID }
        let lifetimeMs = milliseconds(lifetime)
        guard lifetimeMs > 0 else { throw .nonPositiveLifetime }
        let nonceBytes = nonce ?? randomNonce()
        guard !nonceBytes.isEmpty else { throw .emptyNonce }
        var signed = request
        var auth = Bynar_V1_CommandAuth()
        auth.keyID = keyID
        auth.nonce = Data(nonceBytes)
        auth.expiresUnixMs = nowMs + lifetimeMs
        if let fence {
            auth.fenceGroup = fence.group
            auth.fenceEpoch = fence.epoch
        }
        signed.auth = auth
        do {
            let signature = try key.signature(for: signedBytes(signed))
            signed.auth.signature = Data(signature)
        } catch {
            throw .failed("\(error)")
        }
        return signed
    }

    /// The bytes a signature covers: the command kind's ``SignedCommand/signingContext``
    /// followed by the deterministic binary serialization of `request` with
    /// `auth.signature` cleared (everything else, including the rest of `auth`, kept).
    public static func signedBytes<Command: SignedCommand>(_ request: Command) throws -> [UInt8] {
        var unsigned = request
        if unsigned.hasAuth { unsigned.auth.signature = Data() }
        var options = BinaryEncodingOptions()
        options.useDeterministicOrdering = true
        let body: [UInt8] = try unsigned.serializedBytes(options: options)
        return Command.signingContext + body
    }

    static func randomNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceLength).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    public static func milliseconds(_ duration: Duration) -> Int64 {
        duration.wholeMilliseconds
    }
}

/// A protobuf command that carries a ``Bynar_V1_CommandAuth`` and is signed and verified
/// the one way ``CommandSigning`` and ``CommandVerifier`` do: disk-manager commands and
/// operator commands to the orchestrator.
public protocol SignedCommand: SwiftProtobuf.Message {
    /// The signature, key id, nonce and expiry.
    var auth: Bynar_V1_CommandAuth { get set }
    /// Whether `auth` is set.
    var hasAuth: Bool { get }
    /// Bytes put before the serialization that is signed, one value per kind of command, so
    /// a signature made for one kind can never verify as another kind (the same operator
    /// key may be trusted by disk-managers and by the orchestrator).
    static var signingContext: [UInt8] { get }
}

extension Bynar_V1_DiskManagerRequest: SignedCommand {
    /// Empty: disk-manager commands keep the format they were first signed in.
    public static var signingContext: [UInt8] { [] }
}

extension Bynar_V1_OperatorCommand: SignedCommand {
    /// `bynar.v1.OperatorCommand` and a newline. A disk-manager command's serialization
    /// starts with field 1's tag (0x0A), never with `b`, so neither passes as the other.
    public static var signingContext: [UInt8] { Array("bynar.v1.OperatorCommand\n".utf8) }
}

extension Bynar_V1_TicketOperatorCommand: SignedCommand {
    /// `bynar.v1.TicketOperatorCommand` and a newline: neither an orchestrator's nor a
    /// disk-manager's command can pass as one, or the reverse.
    public static var signingContext: [UInt8] { Array("bynar.v1.TicketOperatorCommand\n".utf8) }
}

// MARK: - Trusted keys

/// A problem in a trusted-keys or private key file, with the line it is on.
public struct KeyFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What is wrong with the line.
    public enum Problem: Equatable, Sendable {
        /// Not `KEY_ID ALGORITHM BASE64`: the wrong number of fields.
        case malformed(fieldCount: Int)
        /// An algorithm other than the one the file kind allows.
        case unknownAlgorithm(String)
        /// The key is not valid (padded, whitespace-free) base64.
        case badBase64
        /// The key decodes to this many bytes instead of 32.
        case wrongKeyLength(Int)
        /// 32 bytes, but not a key the Ed25519 implementation accepts.
        case invalidKey
        /// The key id appeared before, on `firstLine`.
        case duplicateKeyID(String, firstLine: Int)
        /// A private key file must hold exactly one key.
        case noKey
        /// A private key file must hold exactly one key; another is on this line.
        case moreThanOneKey
        /// The file could not be read.
        case unreadable(String)
    }

    /// 1-based line number; 0 when the problem is the whole file.
    public var line: Int
    /// What is wrong.
    public var problem: Problem

    /// The error for `problem` on `line` (0: the whole file).
    public init(line: Int, _ problem: Problem) {
        self.line = line
        self.problem = problem
    }

    public var description: String {
        let what: String
        switch problem {
        case .malformed(let count): what = "expected \"KEY_ID ALGORITHM BASE64_KEY\" (3 fields), found \(count)"
        case .unknownAlgorithm(let name): what = "unknown algorithm \"\(name)\""
        case .badBase64: what = "key is not valid base64"
        case .wrongKeyLength(let count): what = "key is \(count) bytes, expected 32"
        case .invalidKey: what = "not a valid Ed25519 key"
        case .duplicateKeyID(let id, let first): what = "duplicate key id \"\(id)\" (first on line \(first))"
        case .noKey: what = "no key in file"
        case .moreThanOneKey: what = "more than one key in file"
        case .unreadable(let why): what = "cannot read: \(why)"
        }
        return line > 0 ? "line \(line): \(what)" : what
    }
}

/// The public keys the disk-manager accepts commands from, by key id.
///
/// File format, one key per line: `KEY_ID ed25519 BASE64` where BASE64 is the 32-byte raw
/// Ed25519 public key in standard padded base64, fields separated by spaces or tabs.
/// Lines whose first non-blank character is `#` are comments; blank lines are ignored.
/// A key id is any run of non-blank characters and appears at most once.
public struct TrustedKeys: Sendable {
    // Raw key bytes: swift-crypto's key types are not Sendable on Linux, and building a
    // public key from its 32 bytes is cheap.
    private let rawKeys: [String: [UInt8]]

    /// Keys given directly (tests, or keys from elsewhere).
    public init(keys: [String: Curve25519.Signing.PublicKey]) {
        rawKeys = keys.mapValues { [UInt8]($0.rawRepresentation) }
    }

    /// Parses a trusted-keys file's text; the error names the first bad line.
    public init(fileText: String) throws(KeyFileError) {
        var keys: [String: [UInt8]] = [:]
        var firstLine: [String: Int] = [:]
        for (number, fields) in KeyFileLines.parse(fileText) {
            guard fields.count == 3 else { throw KeyFileError(line: number, .malformed(fieldCount: fields.count)) }
            let id = fields[0]
            guard fields[1] == "ed25519" else { throw KeyFileError(line: number, .unknownAlgorithm(fields[1])) }
            let raw = try KeyFileLines.decodeKey(fields[2], line: number)
            if let first = firstLine[id] { throw KeyFileError(line: number, .duplicateKeyID(id, firstLine: first)) }
            guard (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil else {
                throw KeyFileError(line: number, .invalidKey)
            }
            keys[id] = raw
            firstLine[id] = number
        }
        rawKeys = keys
    }

    /// Reads and parses the trusted-keys file at `path`.
    public init(path: String) throws(KeyFileError) {
        try self.init(fileText: KeyFileLines.read(path))
    }

    /// The trusted key ids, sorted.
    public var keyIDs: [String] { rawKeys.keys.sorted() }

    /// The key named `keyID`, if trusted.
    public subscript(keyID: String) -> Curve25519.Signing.PublicKey? {
        rawKeys[keyID].flatMap { try? Curve25519.Signing.PublicKey(rawRepresentation: $0) }
    }
}

/// Key files for the `bynar keys generate` command.
///
/// Private key file format: `#` comment lines, then one line `KEY_ID ed25519-private
/// BASE64` where BASE64 is the 32-byte raw Ed25519 private key (seed) in standard padded
/// base64. Whoever holds the file can command every disk-manager that trusts the key:
/// write it with mode 0600 (``privateKeyFileMode``), owned by the operator or service that
/// signs, and never copy it to the storage hosts — they need only the trusted-keys line.
public enum KeyFiles {
    /// The permissions a private key file should have: read and write for its owner only.
    public static let privateKeyFileMode: UInt32 = 0o600

    /// A new key pair: the private key file's text, and the line to append to every
    /// disk-manager's trusted-keys file.
    public static func generate(keyID: String) throws(KeyFileError) -> (privateKeyFileText: String, trustedKeysLine: String) {
        try files(keyID: keyID, key: Curve25519.Signing.PrivateKey())
    }

    /// The files for an existing `key`.
    public static func files(keyID: String, key: Curve25519.Signing.PrivateKey) throws(KeyFileError) -> (privateKeyFileText: String, trustedKeysLine: String) {
        let fields = keyID.split(whereSeparator: { $0 == " " || $0 == "\t" || $0.isNewline })
        guard fields.count == 1, !keyID.hasPrefix("#") else { throw KeyFileError(line: 0, .malformed(fieldCount: fields.count)) }
        let privateText = """
            # bynar command-signing private key "\(keyID)". Keep it secret: mode 0600, never on storage hosts.
            # Disk-managers trust it through this line in their trusted-keys file:
            # \(trustedKeysLine(keyID: keyID, publicKey: key.publicKey))
            \(keyID) ed25519-private \(Base64.encode([UInt8](key.rawRepresentation)))

            """
        return (privateText, trustedKeysLine(keyID: keyID, publicKey: key.publicKey))
    }

    /// The trusted-keys file line for `publicKey`.
    public static func trustedKeysLine(keyID: String, publicKey: Curve25519.Signing.PublicKey) -> String {
        "\(keyID) ed25519 \(Base64.encode([UInt8](publicKey.rawRepresentation)))"
    }

    /// Parses a private key file's text; the error names the bad line.
    public static func loadPrivateKey(text: String) throws(KeyFileError) -> (keyID: String, key: Curve25519.Signing.PrivateKey) {
        var found: (keyID: String, key: Curve25519.Signing.PrivateKey)?
        for (number, fields) in KeyFileLines.parse(text) {
            guard fields.count == 3 else { throw KeyFileError(line: number, .malformed(fieldCount: fields.count)) }
            guard fields[1] == "ed25519-private" else { throw KeyFileError(line: number, .unknownAlgorithm(fields[1])) }
            let raw = try KeyFileLines.decodeKey(fields[2], line: number)
            guard found == nil else { throw KeyFileError(line: number, .moreThanOneKey) }
            guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
                throw KeyFileError(line: number, .invalidKey)
            }
            found = (fields[0], key)
        }
        guard let found else { throw KeyFileError(line: 0, .noKey) }
        return found
    }

    /// Reads and parses the private key file at `path`.
    public static func loadPrivateKey(path: String) throws(KeyFileError) -> (keyID: String, key: Curve25519.Signing.PrivateKey) {
        try loadPrivateKey(text: KeyFileLines.read(path))
    }
}

enum KeyFileLines {
    /// Non-comment, non-blank lines as (1-based number, blank-separated fields). Lines end
    /// in LF or CRLF; Swift reads "\r\n" as one Character, so both are named here.
    static func parse(_ text: String) -> [(Int, [String])] {
        var result: [(Int, [String])] = []
        for (index, line) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let first = fields.first, !first.hasPrefix("#") else { continue }
            result.append((index + 1, fields))
        }
        return result
    }

    static func decodeKey(_ text: String, line: Int) throws(KeyFileError) -> [UInt8] {
        guard let raw = Base64.decode(text) else { throw KeyFileError(line: line, .badBase64) }
        guard raw.count == 32 else { throw KeyFileError(line: line, .wrongKeyLength(raw.count)) }
        return raw
    }

    static func read(_ path: String) throws(KeyFileError) -> String {
        do {
            let data = try Data(contentsOf: URL(filePath: path))
            return String(decoding: data, as: UTF8.self)
        } catch {
            throw KeyFileError(line: 0, .unreadable("\(path): \(error)"))
        }
    }
}

/// Standard padded base64 (RFC 4648 §4), strict: no whitespace, no missing padding, no
/// stray bits in the last character. Written here so key files never depend on a lenient
/// decoder accepting two spellings of one key.
enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = UInt32(bytes[index])
            let b1 = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            let b2 = index + 2 < bytes.count ? UInt32(bytes[index + 2]) : 0
            let group = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(group >> 18 & 63)])
            out.append(alphabet[Int(group >> 12 & 63)])
            out.append(index + 1 < bytes.count ? alphabet[Int(group >> 6 & 63)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(group & 63)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var index = 0
        while index < chars.count {
            let isLast = index + 4 == chars.count
            var values: [UInt32] = []
            var padding = 0
            for offset in 0..<4 {
                let char = chars[index + offset]
                if char == UInt8(ascii: "=") {
                    // Padding only at the end of the last group, at most two.
                    guard isLast, offset >= 2 else { return nil }
                    padding += 1
                    values.append(0)
                } else {
                    guard padding == 0, let value = value(of: char) else { return nil }
                    values.append(value)
                }
            }
            let group = values[0] << 18 | values[1] << 12 | values[2] << 6 | values[3]
            // Canonical form: the bits dropped by padding must be zero.
            if padding == 2, group & 0xFFFF != 0 { return nil }
            if padding == 1, group & 0xFF != 0 { return nil }
            out.append(UInt8(group >> 16 & 0xFF))
            if padding < 2 { out.append(UInt8(group >> 8 & 0xFF)) }
            if padding < 1 { out.append(UInt8(group & 0xFF)) }
            index += 4
        }
        return out
    }

    private static func value(of char: UInt8) -> UInt32? {
        switch char {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): UInt32(char - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): UInt32(char - UInt8(ascii: "a") + 26)
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(char - UInt8(ascii: "0") + 52)
        case UInt8(ascii: "+"): 62
        case UInt8(ascii: "/"): 63
        default: nil
        }
    }
}

// MARK: - Verification

/// A command that passed every check in ``CommandVerifier/verify(_:nowMs:)``.
public struct VerifiedCommand: Sendable {
    /// The request as received.
    public var request: Bynar_V1_DiskManagerRequest
    /// The trusted key that signed it.
    public var keyID: String
    /// Its nonce, now remembered.
    public var nonce: [UInt8]
    /// When it expires (unix ms).
    public var expiresUnixMs: Int64
}

/// Who signed a command that passed every check of ``CommandVerifier/authorize(_:nowMs:sentUnixMs:)``.
public struct CommandAuthorization: Sendable, Equatable {
    /// The trusted key that signed it.
    public var keyID: String
    /// Its nonce, now remembered.
    public var nonce: [UInt8]
    /// When it expires (unix ms).
    public var expiresUnixMs: Int64
}

/// Why the disk-manager refused to act on a command before looking at what it asks.
public enum CommandRejection: Error, Equatable, Sendable, CustomStringConvertible {
    /// No `auth`, or an empty signature.
    case unsigned
    /// The key id is not in the trusted-keys file.
    case unknownKey(String)
    /// `expires_unix_ms` (`at`) is not after now, even allowing for clock skew.
    case expired(at: Int64, clock: ClockReading)
    /// The expiry is further ahead than the verifier's maximum lifetime (plus the allowed
    /// skew) allows.
    case lifetimeTooLong(at: Int64, clock: ClockReading)
    /// The command expired before the oldest expiry whose nonce is still remembered: this
    /// host's clock stepped back past forgotten nonces, so a replay cannot be ruled out.
    case beforeReplayFloor(at: Int64, floor: Int64)
    /// The signature does not match the request and the named key.
    case badSignature
    /// The nonce is empty or longer than ``CommandVerifier/maxNonceLength``.
    case badNonce(length: Int)
    /// A command with this nonce (hex) was accepted before.
    case replayed(String)
    /// The nonce could not be recorded, so a replay could not be ruled out.
    case nonceStoreFailed(String)
    /// Signed by a leader of `group` whose epoch is below the highest this host has seen
    /// for the group: an orchestrator that lost its leadership (paused, cut off) while
    /// another took over.
    case fenced(group: String, epoch: Int64, highest: Int64)

    public var description: String {
        switch self {
        case .unsigned: "command is not signed"
        case .unknownKey(let id): "command signed with unknown key \"\(id)\""
        case .expired(let at, let clock): "command expired at \(at) (unix ms), \(clock.nowMs - at) ms ago by this host's clock; \(clock)"
        case .lifetimeTooLong(let at, let clock): "command expires too far in the future (at \(at), \(at - clock.nowMs) ms from now by this host's clock); \(clock)"
        case .beforeReplayFloor(let at, let floor):
            "command expired at \(at) (unix ms), before \(floor), the oldest expiry whose nonce is still remembered (this host's clock stepped back?): a replay cannot be ruled out"
        case .badSignature: "command signature is not valid"
        case .badNonce(let length): "command nonce has \(length) bytes (1...\(CommandVerifier.maxNonceLength) allowed)"
        case .replayed(let nonce): "command nonce \(nonce) was used before (replay)"
        case .nonceStoreFailed(let why): "cannot record the command nonce: \(why)"
        case .fenced(let group, let epoch, let highest):
            "fenced: signed by a leader of orchestrator group \"\(group)\" with epoch \(epoch), but a leader with epoch \(highest) has spoken since (a stale leader)"
        }
    }
}

/// What a time-based refusal says about the two clocks, so an operator can tell a stale
/// command from a skewed clock.
public struct ClockReading: Sendable, Equatable, CustomStringConvertible {
    /// This host's clock at the check (unix ms).
    public var nowMs: Int64
    /// How far the clocks may disagree (`disk_manager.allowed_clock_skew_seconds`).
    public var allowedSkewMs: Int64
    /// The sender's clock minus this host's, measured from the envelope's `created_unix_ms`
    /// (includes the message's transit time); nil when not known.
    public var senderAheadMs: Int64?

    public init(nowMs: Int64, allowedSkewMs: Int64, senderAheadMs: Int64? = nil) {
        self.nowMs = nowMs
        self.allowedSkewMs = allowedSkewMs
        self.senderAheadMs = senderAheadMs
    }

    public var description: String {
        let allowed = "allowed clock skew \(allowedSkewMs) ms"
        guard let ahead = senderAheadMs else { return allowed }
        let measured = ahead >= 0 ? "the sender's clock is \(ahead) ms ahead of this host's" : "the sender's clock is \(-ahead) ms behind this host's"
        return "\(allowed); \(measured) (envelope created_unix_ms)" + (abs(ahead) > allowedSkewMs ? ": check NTP on both" : "")
    }
}

/// Checks a command's signature against the trusted keys and refuses replays, remembering
/// nonces in the disk-manager's store so a restart does not reopen the replay window.
///
/// Checks, in order: has a signature; key id trusted; not expired and not expiring later
/// than `now + maxLifetime`; signature valid; nonce well-formed and never accepted before.
/// The nonce is recorded only when every other check passed, so unsigned or forged junk
/// never fills the table.
public struct CommandVerifier: Sendable {
    /// Longest nonce accepted; longer ones are refused rather than stored.
    public static let maxNonceLength = 64

    /// Store migrations for the nonce table; the disk-manager passes them to its
    /// ``LocalStore``.
    public static let migrations: [LocalStore.Migration] = [
        LocalStore.Migration("disk-manager-nonces-v1") { db in
            try db.create(table: "dm_command_nonce") { table in
                table.primaryKey("nonce", .blob)
                table.column("key_id", .text).notNull()
                table.column("expires_unix_ms", .integer).notNull().indexed()
                table.column("accepted_unix_ms", .integer).notNull()
            }
        },
        LocalStore.Migration("disk-manager-nonce-floor-v1") { db in
            // The highest cutoff nonces were ever pruned below: a command expiring before it
            // may have had its nonce forgotten, so it is refused whatever the clock says now.
            try db.create(table: "dm_nonce_floor") { table in
                table.primaryKey("id", .integer).check { $0 == 1 }
                table.column("floor_unix_ms", .integer).notNull()
            }
        },
        LocalStore.Migration("disk-manager-fence-v1") { db in
            // The highest leader epoch seen per orchestrator group (``CommandRejection/fenced``).
            try db.create(table: "dm_fence") { table in
                table.primaryKey("fence_group", .text)
                table.column("epoch", .integer).notNull()
                table.column("seen_unix_ms", .integer).notNull()
            }
        },
    ]

    /// The keys commands may be signed with (read again from their file when it changes,
    /// for a verifier made with a ``TrustedKeysFile``).
    public var trustedKeys: TrustedKeys { keys() }
    private let keys: @Sendable () -> TrustedKeys
    /// Where nonces are remembered.
    public let store: LocalStore
    /// A command may expire at most this far after it is verified.
    public let maxLifetime: Duration
    /// How long a nonce is kept after its command expired. Past expiry a replay is refused
    /// as expired anyway; the margin keeps it refused as a replay when the clock steps back.
    public let nonceRetention: Duration
    /// How far the sender's clock and this host's may disagree: a command is still taken
    /// this long after its expiry by this host's clock (and may expire this much later than
    /// the maximum lifetime). Must be well below ``nonceRetention``.
    public let allowedSkew: Duration

    /// A verifier over `store`, which must have been opened with ``migrations``.
    public init(
        trustedKeys: TrustedKeys, store: LocalStore, maxLifetime: Duration = .seconds(600), nonceRetention: Duration = .seconds(3600),
        allowedSkew: Duration = .seconds(30)
    ) {
        self.init(keys: { trustedKeys }, store: store, maxLifetime: maxLifetime, nonceRetention: nonceRetention, allowedSkew: allowedSkew)
    }

    /// A verifier over the keys `file` holds at each check (the nonces stay in `store`
    /// across reloads, so a reload reopens no replay window).
    public init(
        keysFile file: TrustedKeysFile, store: LocalStore, maxLifetime: Duration = .seconds(600), nonceRetention: Duration = .seconds(3600),
        allowedSkew: Duration = .seconds(30)
    ) {
        self.init(keys: { file.keys }, store: store, maxLifetime: maxLifetime, nonceRetention: nonceRetention, allowedSkew: allowedSkew)
    }

    private init(keys: @escaping @Sendable () -> TrustedKeys, store: LocalStore, maxLifetime: Duration, nonceRetention: Duration, allowedSkew: Duration) {
        self.keys = keys
        self.store = store
        self.maxLifetime = maxLifetime
        self.nonceRetention = max(nonceRetention, allowedSkew * 2)
        self.allowedSkew = allowedSkew
    }

    /// Verifies `request` at `nowMs` (unix ms) and, when it passes, records its nonce.
    /// `sentUnixMs` (the envelope's `created_unix_ms`, by the sender's clock) only makes a
    /// refusal say how far the clocks disagree; nothing is decided on it.
    public func verify(_ request: Bynar_V1_DiskManagerRequest, nowMs: Int64, sentUnixMs: Int64? = nil) -> Result<VerifiedCommand, CommandRejection> {
        authorize(request, nowMs: nowMs, sentUnixMs: sentUnixMs).map {
            VerifiedCommand(request: request, keyID: $0.keyID, nonce: $0.nonce, expiresUnixMs: $0.expiresUnixMs)
        }
    }

    /// Runs every check of ``verify(_:nowMs:sentUnixMs:)`` on any kind of signed command
    /// (e.g. an operator command to the orchestrator) and, when it passes, records its nonce.
    public func authorize<Command: SignedCommand>(_ request: Command, nowMs: Int64, sentUnixMs: Int64? = nil) -> Result<CommandAuthorization, CommandRejection> {
        guard request.hasAuth, !request.auth.signature.isEmpty else { return .failure(.unsigned) }
        let auth = request.auth
        guard let key = keys()[auth.keyID] else { return .failure(.unknownKey(auth.keyID)) }
        let skewMs = CommandSigning.milliseconds(allowedSkew)
        let clock = ClockReading(nowMs: nowMs, allowedSkewMs: skewMs, senderAheadMs: sentUnixMs.flatMap { $0 > 0 ? $0 - nowMs : nil })
        guard auth.expiresUnixMs + skewMs > nowMs else { return .failure(.expired(at: auth.expiresUnixMs, clock: clock)) }
        guard auth.expiresUnixMs <= nowMs + CommandSigning.milliseconds(maxLifetime) + skewMs else {
            return .failure(.lifetimeTooLong(at: auth.expiresUnixMs, clock: clock))
        }
        guard let bytes = try? CommandSigning.signedBytes(request), key.isValidSignature(auth.signature, for: bytes) else {
            return .failure(.badSignature)
        }
        let nonce = [UInt8](auth.nonce)
        guard (1...Self.maxNonceLength).contains(nonce.count) else { return .failure(.badNonce(length: nonce.count)) }
        do {
            let fresh = try store.write { db -> Bool? in
                if let fenced = try Self.fence(db, auth, nowMs: nowMs) { throw fenced }
                // Sound when the clock steps back: nonces are only ever forgotten below the
                // floor, and nothing expiring below it is taken.
                let floor = try Self.prune(db, nowMs: nowMs, retentionMs: CommandSigning.milliseconds(nonceRetention)).floor
                if auth.expiresUnixMs < floor { return nil }
                try db.execute(
                    sql: "INSERT OR IGNORE INTO dm_command_nonce(nonce, key_id, expires_unix_ms, accepted_unix_ms) VALUES(?, ?, ?, ?)",
                    arguments: [Data(nonce), auth.keyID, auth.expiresUnixMs, nowMs]
                )
                return db.changesCount == 1
            }
            guard let fresh else { return .failure(.beforeReplayFloor(at: auth.expiresUnixMs, floor: try floor())) }
            guard fresh else { return .failure(.replayed(Self.hex(nonce))) }
        } catch let fenced as CommandRejection {
            return .failure(fenced)
        } catch {
            return .failure(.nonceStoreFailed("\(error)"))
        }
        return .success(CommandAuthorization(keyID: auth.keyID, nonce: nonce, expiresUnixMs: auth.expiresUnixMs))
    }

    /// Fencing: a command with a leader epoch is refused when a higher one of its group was
    /// seen, and otherwise raises the group's highest (in the transaction that takes its
    /// nonce, so a refused command leaves neither behind).
    private static func fence(_ db: Database, _ auth: Bynar_V1_CommandAuth, nowMs: Int64) throws -> CommandRejection? {
        guard auth.fenceEpoch > 0 else { return nil }
        let highest = try Int64.fetchOne(db, sql: "SELECT epoch FROM dm_fence WHERE fence_group = ?", arguments: [auth.fenceGroup]) ?? 0
        if auth.fenceEpoch < highest { return .fenced(group: auth.fenceGroup, epoch: auth.fenceEpoch, highest: highest) }
        if auth.fenceEpoch > highest {
            try db.execute(sql: "INSERT INTO dm_fence(fence_group, epoch, seen_unix_ms) VALUES(?, ?, ?) ON CONFLICT(fence_group) DO UPDATE SET epoch = excluded.epoch, seen_unix_ms = excluded.seen_unix_ms",
                           arguments: [auth.fenceGroup, auth.fenceEpoch, nowMs])
        }
        return nil
    }

    /// The highest leader epoch seen for `group` (0: none).
    public func highestEpoch(group: String) throws -> Int64 {
        try store.database.read { db in try Int64.fetchOne(db, sql: "SELECT epoch FROM dm_fence WHERE fence_group = ?", arguments: [group]) ?? 0 }
    }

    /// Forgets nonces whose command expired more than ``nonceRetention`` before `nowMs`;
    /// returns how many. ``verify(_:nowMs:)`` does this on every accepted command.
    @discardableResult
    public func pruneNonces(nowMs: Int64) throws -> Int {
        try store.write { db in
            try Self.prune(db, nowMs: nowMs, retentionMs: CommandSigning.milliseconds(nonceRetention)).pruned
        }
    }

    /// The replay floor: commands expiring before it are refused (0 until a nonce was pruned).
    public func floor() throws -> Int64 {
        try store.database.read { db in try Int64.fetchOne(db, sql: "SELECT floor_unix_ms FROM dm_nonce_floor WHERE id = 1") ?? 0 }
    }

    /// How many nonces are remembered.
    public func rememberedNonceCount() throws -> Int {
        try store.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM dm_command_nonce") ?? 0 }
    }

    /// Forgets nonces that expired more than `retentionMs` ago, never lowering the floor
    /// (a clock that stepped back prunes nothing new); returns how many and the floor.
    private static func prune(_ db: Database, nowMs: Int64, retentionMs: Int64) throws -> (pruned: Int, floor: Int64) {
        let previous = try Int64.fetchOne(db, sql: "SELECT floor_unix_ms FROM dm_nonce_floor WHERE id = 1") ?? 0
        let cutoff = nowMs - retentionMs
        guard cutoff > previous else { return (0, previous) }
        try db.execute(sql: "DELETE FROM dm_command_nonce WHERE expires_unix_ms < ?", arguments: [cutoff])
        let pruned = db.changesCount
        try db.execute(sql: "INSERT INTO dm_nonce_floor(id, floor_unix_ms) VALUES(1, ?) ON CONFLICT(id) DO UPDATE SET floor_unix_ms = excluded.floor_unix_ms",
                       arguments: [cutoff])
        return (pruned, cutoff)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
