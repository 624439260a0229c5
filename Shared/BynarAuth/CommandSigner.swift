public import Crypto

/// A private signing key, its id and how long what it signs stays valid: what
/// ``DiskManagerClient`` and ``OperatorClient`` sign their commands with.
public struct CommandSigner: Sendable {
    /// The key's id, as trusted-keys files name it.
    public let keyID: String
    /// The private key, expanded once (deriving the key pair from the seed for every
    /// signature was half of the orchestrator's signing time in a flood).
    private let key: SigningKeyBox
    /// How long a signed command stays valid (its expiry).
    public var commandLifetime: Duration
    /// The leader epoch commands carry (``Fence``), read at each signature: nil, unfenced.
    public var fence: (@Sendable () -> Fence?)?

    /// An orchestrator group and the epoch its current leader holds (etcd coordination).
    public struct Fence: Sendable, Equatable {
        public var group: String
        public var epoch: Int64
        public init(group: String, epoch: Int64) {
            self.group = group
            self.epoch = epoch
        }
    }

    /// A signer with `key`, named `keyID`.
    public init(keyID: String, key: Curve25519.Signing.PrivateKey, commandLifetime: Duration) {
        self.keyID = keyID
        self.key = SigningKeyBox(key)
        self.commandLifetime = commandLifetime
    }

    /// Loads the private key from a file written by `bynar keys generate`.
    public init(privateKeyFile: String, commandLifetime: Duration) throws(KeyFileError) {
        let loaded = try KeyFiles.loadPrivateKey(path: privateKeyFile)
        self.init(keyID: loaded.keyID, key: loaded.key, commandLifetime: commandLifetime)
    }

    /// `command` signed at `nowMs` (``CommandSigning/sign(_:keyID:key:lifetime:nowMs:nonce:fence:)``).
    public func sign<Command: SignedCommand>(_ command: Command, nowMs: Int64) throws -> Command {
        return try CommandSigning.sign(command, keyID: keyID, key: key.key, lifetime: commandLifetime, nowMs: nowMs, fence: fence?())
    }
}

/// swift-crypto's private key is not declared Sendable. It is an immutable value whose
/// storage is only read when signing (BoringSSL's ED25519_sign takes it as const), so one
/// expanded key is shared by every thread that signs.
private final class SigningKeyBox: @unchecked Sendable {
    let key: Curve25519.Signing.PrivateKey
    init(_ key: Curve25519.Signing.PrivateKey) { self.key = key }
}
