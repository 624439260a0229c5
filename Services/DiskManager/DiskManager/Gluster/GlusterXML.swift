import BynarDisks

/// What the Gluster backend reads from `gluster --xml` (volume info, volume status, heal
/// info) and the rules it decides by. Pure: text in, values out, no I/O, so every rule is
/// unit-tested on output captured from a real glusterd 10.3.

/// One element of an XML document: its name, attributes, text directly inside, children.
/// Only what gluster's CLI prints: no DTD, no CDATA, no namespaces.
public struct XMLElement: Sendable, Equatable {
    public var name: String
    public var attributes: [String: String] = [:]
    public var text = ""
    public var children: [XMLElement] = []

    /// The first child named `name`.
    public func child(_ name: String) -> XMLElement? { children.first { $0.name == name } }
    /// Every child named `name`.
    public func children(_ name: String) -> [XMLElement] { children.filter { $0.name == name } }
    /// The trimmed text of the first child named `name` ("" when there is none).
    public func value(_ name: String) -> String { child(name)?.text.trimmingWhitespace() ?? "" }

    /// Parses a document; throws on text that is not well-formed in the subset above.
    public static func parse(_ text: String) throws(GlusterParseError) -> XMLElement {
        var stack: [XMLElement] = [XMLElement(name: "")]
        var index = text.startIndex
        func fail(_ why: String) -> GlusterParseError { GlusterParseError("not XML: \(why) at offset \(text.distance(from: text.startIndex, to: index))") }
        while index < text.endIndex {
            guard let open = text[index...].firstIndex(of: "<") else {
                stack[stack.count - 1].text += unescape(text[index...])
                break
            }
            stack[stack.count - 1].text += unescape(text[index..<open])
            guard let close = text[open...].firstIndex(of: ">") else { throw fail("unclosed tag") }
            let tag = text[text.index(after: open)..<close]
            index = text.index(after: close)
            if tag.hasPrefix("?") || tag.hasPrefix("!") { continue }
            if tag.hasPrefix("/") {
                guard stack.count > 1, stack[stack.count - 1].name == String(tag.dropFirst()).trimmingWhitespace() else { throw fail("unexpected </\(tag.dropFirst())>") }
                let done = stack.removeLast()
                stack[stack.count - 1].children.append(done)
                continue
            }
            let selfClosing = tag.hasSuffix("/")
            var element = try element(from: selfClosing ? tag.dropLast() : tag, fail)
            if selfClosing {
                element.text = ""
                stack[stack.count - 1].children.append(element)
            } else {
                stack.append(element)
            }
        }
        guard stack.count == 1, let root = stack[0].children.first else { throw GlusterParseError("not XML: \(stack.count > 1 ? "<\(stack[stack.count - 1].name)> is not closed" : "no element")") }
        return root
    }

    private static func element(from tag: Substring, _ fail: (String) -> GlusterParseError) throws(GlusterParseError) -> XMLElement {
        let parts = tag.split(maxSplits: 1, whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard let name = parts.first, !name.isEmpty else { throw fail("empty tag") }
        var element = XMLElement(name: String(name))
        var rest = parts.count > 1 ? parts[1] : ""
        while let equals = rest.firstIndex(of: "=") {
            let key = String(rest[..<equals]).trimmingWhitespace()
            let afterEquals = rest[rest.index(after: equals)...].drop { $0 == " " }
            guard let quote = afterEquals.first, quote == "\"" || quote == "'",
                  let end = afterEquals.dropFirst().firstIndex(of: quote) else { throw fail("bad attribute \(key)") }
            element.attributes[key] = unescape(afterEquals[afterEquals.index(after: afterEquals.startIndex)..<end])
            rest = afterEquals[afterEquals.index(after: end)...]
        }
        return element
    }

    private static func unescape(_ text: Substring) -> String {
        guard text.contains("&") else { return String(text) }
        return String(text)
            .replacingAll("&lt;", with: "<").replacingAll("&gt;", with: ">")
            .replacingAll("&quot;", with: "\"").replacingAll("&apos;", with: "'").replacingAll("&amp;", with: "&")
    }
}

public struct GlusterParseError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One volume as `gluster volume info --xml` describes it.
public struct GlusterVolume: Sendable, Equatable {
    public var name: String
    /// "Started", "Stopped", "Created".
    public var status: String
    /// "Replicate", "Distributed-Replicate", "Disperse", "Distribute", …
    public var type: String
    public var replicaCount: Int
    public var disperseCount: Int
    /// Bricks of a disperse set that may be lost.
    public var redundancyCount: Int
    /// "HOST:PATH", in volume order (consecutive bricks form the replica / disperse sets).
    public var bricks: [String]

    /// How many consecutive bricks form one set that shares data: the replica count, the
    /// disperse count, or 1 (plain distribute: no redundancy).
    public var setSize: Int { disperseCount > 0 ? disperseCount : max(replicaCount, 1) }
    /// Whether a set keeps its files whole with one brick missing.
    public var redundant: Bool { disperseCount > 0 ? redundancyCount > 0 : replicaCount > 1 }
    /// How many other bricks of a set may be offline when one is taken out: for a replica
    /// set none (every remaining copy is needed for client quorum and as a source for the
    /// heal), for a disperse set its redundancy less the brick taken out.
    public var othersMayBeOffline: Int { disperseCount > 0 ? max(redundancyCount - 1, 0) : 0 }

    /// The bricks of the set `brick` belongs to (itself included), or [] when not a brick here.
    public func set(of brick: String) -> [String] {
        guard let index = bricks.firstIndex(of: brick) else { return [] }
        let start = index - index % setSize
        return Array(bricks[start..<min(start + setSize, bricks.count)])
    }

    /// Parses `gluster volume info --xml` (all volumes or one).
    public static func parseInfo(_ text: String) throws(GlusterParseError) -> [GlusterVolume] {
        let root = try XMLElement.parse(text)
        try checkOpRet(root)
        guard let volumes = root.child("volInfo")?.child("volumes") else { throw GlusterParseError("volume info: no <volInfo><volumes>") }
        return try volumes.children("volume").map { volume throws(GlusterParseError) in
            let bricks: [String] = volume.child("bricks")?.children("brick").map { brick -> String in
                let name = brick.value("name")
                return name.isEmpty ? brick.text.trimmingWhitespace() : name
            } ?? []
            func int(_ field: String) throws(GlusterParseError) -> Int {
                guard let value = Int(volume.value(field)) else { throw GlusterParseError("volume info: <\(field)> of \(volume.value("name")) is \"\(volume.value(field))\"") }
                return value
            }
            return GlusterVolume(name: volume.value("name"), status: volume.value("statusStr"), type: volume.value("typeStr"),
                                 replicaCount: try int("replicaCount"), disperseCount: try int("disperseCount"),
                                 redundancyCount: try int("redundancyCount"), bricks: bricks)
        }
    }
}

/// Whether each brick's process is up, from `gluster volume status VOL --xml` ("HOST:PATH" → online).
public enum GlusterStatus {
    public static func parseOnline(_ text: String) throws(GlusterParseError) -> [String: Bool] {
        let root = try XMLElement.parse(text)
        try checkOpRet(root)
        guard let volume = root.child("volStatus")?.child("volumes")?.child("volume") else { throw GlusterParseError("volume status: no <volStatus><volumes><volume>") }
        var online: [String: Bool] = [:]
        // Daemons (self-heal, NFS) are listed as nodes too, with a path that is not a brick's.
        for node in volume.children("node") where node.value("path").hasPrefix("/") {
            online["\(node.value("hostname")):\(node.value("path"))"] = node.value("status") == "1"
        }
        return online
    }
}

/// `gluster volume heal VOL info --xml`: per brick, whether heal info reached it and how
/// many entries it holds that still need healing.
public struct GlusterHealInfo: Sendable, Equatable {
    public struct Brick: Sendable, Equatable {
        public var name: String
        /// "Connected", or why not ("Transport endpoint is not connected").
        public var status: String
        /// Nil when the brick could not be asked ("-").
        public var pending: Int?
        /// The pending entries' gfids (or paths when gluster gave no gfid).
        public var entries: Set<String> = []
    }

    public var bricks: [Brick]

    public func brick(_ name: String) -> Brick? { bricks.first { $0.name == name } }

    public static func parse(_ text: String) throws(GlusterParseError) -> GlusterHealInfo {
        let root = try XMLElement.parse(text)
        try checkOpRet(root)
        guard let bricks = root.child("healInfo")?.child("bricks") else { throw GlusterParseError("heal info: no <healInfo><bricks>") }
        return GlusterHealInfo(bricks: bricks.children("brick").map { brick in
            Brick(name: brick.value("name"), status: brick.value("status"), pending: Int(brick.value("numberOfEntries")),
                  entries: Set(brick.children("file").map { $0.attributes["gfid"] ?? $0.text.trimmingWhitespace() }))
        })
    }
}

/// The rules for one brick (rules numbered as in docs/backends.md):
/// 1. A volume that is not Started: safe (nothing is served from it).
/// 2. A volume without redundancy (set size 1): never safe, the brick's files exist nowhere else.
/// 3. The other bricks of its set: a replica set needs every other brick online; a
///    disperse set may have `redundancy - 1` others offline (the brick itself counts as lost).
/// 4. Heal info: every other online brick of the set must have been reached and hold no
///    pending entry (an entry there means some copy is behind and this brick may be the
///    only good one).
public enum GlusterSafety {
    public static func decide(brick: String, volume: GlusterVolume, online: [String: Bool], heal: GlusterHealInfo?) -> SafetyAnswer {
        guard volume.status == "Started" else { return SafetyAnswer(safe: true, detail: "volume \(volume.name) is \(volume.status.isEmpty ? "not started" : volume.status)") }
        let set = volume.set(of: brick)
        guard !set.isEmpty else { return SafetyAnswer(safe: false, detail: "\(brick) is not a brick of \(volume.name)") }
        guard volume.redundant else { return SafetyAnswer(safe: false, detail: "\(volume.name) is \(volume.type) without redundancy: \(brick) holds the only copy of its files") }
        let others = set.filter { $0 != brick }
        let offline = others.filter { online[$0] != true }
        if offline.count > volume.othersMayBeOffline {
            return SafetyAnswer(safe: false, detail: "\(volume.name): \(offline.joined(separator: ", ")) of \(brick)'s \(volume.disperseCount > 0 ? "disperse" : "replica") set \(offline.count == 1 ? "is" : "are") offline; without \(brick) too the set would be short of copies (\(volume.othersMayBeOffline) others may be offline)")
        }
        guard let heal else { return SafetyAnswer(safe: false, detail: "\(volume.name): heal info not known") }
        var behind: [String] = []
        var reached: [GlusterHealInfo.Brick] = []
        for other in others where online[other] == true {
            guard let entry = heal.brick(other), entry.pending != nil else {
                behind.append("\(other) not reached by heal info (\(heal.brick(other)?.status ?? "not listed"))")
                continue
            }
            reached.append(entry)
        }
        if !behind.isEmpty { return SafetyAnswer(safe: false, detail: "\(volume.name): " + behind.joined(separator: "; ")) }
        let up = others.count - offline.count
        let pending = reached.filter { ($0.pending ?? 0) > 0 }
        if pending.isEmpty {
            return SafetyAnswer(safe: true, detail: "\(volume.name): \(up) other brick\(up == 1 ? "" : "s") of \(brick)'s set online with nothing pending heal")
        }
        // Entries the other bricks hold for a brick that is down: every other brick of the
        // set lists the very same entries, so each has a good copy of each and they blame
        // only the missing brick (a brick is listed for what it holds and others lack). Taking
        // that brick out loses nothing; it is the normal case for a disk that died while the
        // volume was written to. Anything else (the brick itself reachable with entries of
        // its own, or the others disagreeing) may be a copy only some bricks hold: not safe.
        let own = heal.brick(brick)
        let brickIsDown = online[brick] != true && (own?.pending == nil)
        let lists = Set(reached.map(\.entries))
        if brickIsDown, lists.count == 1, let agreed = lists.first, agreed.count == reached[0].pending {
            return SafetyAnswer(safe: true, detail: "\(volume.name): \(up) other brick\(up == 1 ? "" : "s") of \(brick)'s set online; the \(agreed.count) entr\(agreed.count == 1 ? "y" : "ies") they list pending heal \(agreed.count == 1 ? "is" : "are") the same on each, waiting for \(brick) (down)")
        }
        let counts = pending.map { "\($0.name) has \($0.pending ?? 0) entr\($0.pending == 1 ? "y" : "ies") pending heal" }.joined(separator: "; ")
        let why = brickIsDown ? "the other bricks do not list the same entries" : "\(brick) is up, so they may be waiting for another brick"
        return SafetyAnswer(safe: false, detail: "\(volume.name): \(counts) (\(why))")
    }

    /// Entries still to heal on the bricks of `set` that heal info reached (nil: none reached).
    public static func pending(in set: [String], heal: GlusterHealInfo) -> Int? {
        let counts = set.compactMap { heal.brick($0)?.pending }
        return counts.isEmpty ? nil : counts.reduce(0, +)
    }
}

/// A failed CLI call still exits 0 with `--xml` in some cases; `<opRet>` says the truth.
private func checkOpRet(_ root: XMLElement) throws(GlusterParseError) {
    let ret = root.value("opRet")
    if !ret.isEmpty, ret != "0" {
        throw GlusterParseError("gluster said: \(root.value("opErrstr").isEmpty ? "opRet \(ret)" : root.value("opErrstr"))")
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
