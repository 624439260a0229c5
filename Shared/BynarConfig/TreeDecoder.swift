import Synchronization

/// Decodes a `Decodable` from a ``JSONValue`` tree.
///
/// Unlike JSONDecoder it maps Swift's camelCase property names to the snake_case keys of
/// Bynar's config files, accepts strings for numbers and booleans (environment overrides
/// are strings), names the offending field in every error, and records which keys were
/// read so unknown keys (typos) can be reported.
struct TreeDecoder {
    /// Keys read during a decode, as dotted paths.
    final class Visited: Sendable {
        private let paths = Mutex<Set<String>>([])
        func insert(_ path: [String]) { paths.withLock { _ = $0.insert(path.joined(separator: ".")) } }
        func contains(_ path: [String]) -> Bool { paths.withLock { $0.contains(path.joined(separator: ".")) } }
    }

    static func decode<T: Decodable>(_ type: T.Type, from tree: JSONValue) throws -> (T, Visited) {
        let visited = Visited()
        let decoder = Node(value: tree, path: [], visited: visited)
        return (try T(from: decoder), visited)
    }

    /// `dbLocation` -> `db_location`.
    static func snakeCase(_ name: String) -> String {
        var out = ""
        for character in name {
            if character.isUppercase {
                if !out.isEmpty { out.append("_") }
                out.append(contentsOf: character.lowercased())
            } else {
                out.append(character)
            }
        }
        return out
    }
}

/// Where a decode failed and why, in words for an operator.
public struct FieldError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Dotted path of the field, e.g. `broker.port`.
    public var field: String
    public var problem: String
    public var description: String { "\(field.isEmpty ? "(top level)" : field): \(problem)" }

    /// The error for `field` (dotted, e.g. `orchestrator.operator_keys_file`): `problem`.
    public init(field: String, problem: String) {
        self.field = field
        self.problem = problem
    }
}

private struct StringKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { stringValue = "\(intValue)"; self.intValue = intValue }
}

private struct Node: Decoder {
    let value: JSONValue
    let path: [String]
    let visited: TreeDecoder.Visited
    var codingPath: [any CodingKey] { path.map(StringKey.init) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func fail(_ problem: String) -> FieldError {
        FieldError(field: path.joined(separator: "."), problem: problem)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = value else { throw fail("expected an object, found \(value.typeName)") }
        return KeyedDecodingContainer(Keyed<Key>(node: self, members: members))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw fail("expected an array, found \(value.typeName)") }
        return Unkeyed(node: self, items: items)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { Single(node: self) }

    func child(_ value: JSONValue, _ key: String) -> Node {
        Node(value: value, path: path + [key], visited: visited)
    }

    // Scalars. Strings are accepted where a number or boolean is wanted, because
    // environment overrides arrive as strings.
    func decodeBool() throws -> Bool {
        switch value {
        case .bool(let flag): return flag
        case .string(let text):
            switch text.lowercased() {
            case "true", "yes", "on", "1": return true
            case "false", "no", "off", "0": return false
            default: throw fail("expected a boolean (true/false), found \"\(text)\"")
            }
        default: throw fail("expected a boolean, found \(value.typeName)")
        }
    }

    func decodeInteger<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        let result: I?
        switch value {
        case .integer(let number): result = I(exactly: number)
        case .number(let number): result = number.rounded() == number ? I(exactly: number) : nil
        case .string(let text): result = I(text.trimmingCharacters(in: " "))
        default: throw fail("expected a whole number, found \(value.typeName)")
        }
        guard let result else { throw fail("expected a whole number in \(I.min)...\(I.max), found \(describe(value))") }
        return result
    }

    func decodeDouble() throws -> Double {
        switch value {
        case .integer(let number): return Double(number)
        case .number(let number): return number
        case .string(let text):
            guard let number = Double(text) else { throw fail("expected a number, found \"\(text)\"") }
            return number
        default: throw fail("expected a number, found \(value.typeName)")
        }
    }

    func decodeString() throws -> String {
        switch value {
        case .string(let text): return text
        case .integer, .number, .bool: throw fail("expected a string, found \(describe(value)); quote it")
        default: throw fail("expected a string, found \(value.typeName)")
        }
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        switch type {
        case is Bool.Type: return try decodeBool() as! T
        case is String.Type: return try decodeString() as! T
        case is Double.Type: return try decodeDouble() as! T
        case is Int.Type: return try decodeInteger(Int.self) as! T
        case is Int32.Type: return try decodeInteger(Int32.self) as! T
        case is Int64.Type: return try decodeInteger(Int64.self) as! T
        case is UInt.Type: return try decodeInteger(UInt.self) as! T
        case is UInt16.Type: return try decodeInteger(UInt16.self) as! T
        case is UInt32.Type: return try decodeInteger(UInt32.self) as! T
        case is UInt64.Type: return try decodeInteger(UInt64.self) as! T
        default:
            do {
                return try T(from: self)
            } catch let error as FieldError {
                throw error
            } catch DecodingError.dataCorrupted(let context) {
                throw fail(context.debugDescription)
            }
        }
    }
}

private func describe(_ value: JSONValue) -> String {
    switch value {
    case .integer(let number): "\(number)"
    case .number(let number): "\(number)"
    case .bool(let flag): "\(flag)"
    case .string(let text): "\"\(text)\""
    default: value.typeName
    }
}

private extension String {
    func trimmingCharacters(in set: Character) -> String {
        var text = Substring(self)
        while text.first == set { text = text.dropFirst() }
        while text.last == set { text = text.dropLast() }
        return String(text)
    }
}

private struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let node: Node
    let members: [String: JSONValue]
    var codingPath: [any CodingKey] { node.codingPath }
    var allKeys: [Key] {
        members.keys.compactMap { name in
            node.visited.insert(node.path + [name])
            return Key(stringValue: name)
        }
    }

    func name(_ key: Key) -> String { TreeDecoder.snakeCase(key.stringValue) }

    func contains(_ key: Key) -> Bool {
        node.visited.insert(node.path + [name(key)])
        return members[name(key)] != nil
    }

    func lookup(_ key: Key) throws -> Node {
        let name = name(key)
        node.visited.insert(node.path + [name])
        guard let value = members[name] else {
            throw FieldError(field: (node.path + [name]).joined(separator: "."), problem: "is required")
        }
        return node.child(value, name)
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        let value = members[name(key)]
        node.visited.insert(node.path + [name(key)])
        return value == nil || value == .null
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try lookup(key).decodeValue(type)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try lookup(key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try lookup(key).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder { node }
    func superDecoder(forKey key: Key) throws -> any Decoder { try lookup(key) }
}

private struct Unkeyed: UnkeyedDecodingContainer {
    let node: Node
    let items: [JSONValue]
    var currentIndex = 0
    var codingPath: [any CodingKey] { node.codingPath }
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    mutating func next() throws -> Node {
        guard !isAtEnd else { throw node.fail("array has too few elements") }
        defer { currentIndex += 1 }
        return node.child(items[currentIndex], "\(currentIndex)")
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { try next() }
}

private struct Single: SingleValueDecodingContainer {
    let node: Node
    var codingPath: [any CodingKey] { node.codingPath }
    func decodeNil() -> Bool { node.value == .null }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try node.decodeValue(type) }
}
