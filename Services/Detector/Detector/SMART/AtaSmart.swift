import CAtaSmart
import Glibc

/// libatasmart, wrapped once: the only place in the project that calls its C API.
///
/// A read opens the drive (or loads a saved `skdump --save` blob), reads its SMART data,
/// and turns what libatasmart reports into a `SmartReading`. libatasmart knows per-model
/// quirks (attributes that are not what their id says on some drives); where it marks an
/// attribute unknown, the reading leaves that figure `nil` rather than guessing.
package enum AtaSmart {
    /// Reads SMART from an ATA device node (`/dev/sdX`). Needs the privileges to open it;
    /// may wake a sleeping drive. Blocks while the drive answers.
    package static func read(device path: String) throws(SmartError) -> SmartReading {
        let disk = try Disk(device: path)
        return try disk.reading()
    }

    /// Reads a saved libatasmart blob (tagged IDFY/SMDT/SMTH/SMST sections). `name` names it
    /// in errors.
    package static func read(blob bytes: [UInt8], name: String) throws(SmartError) -> SmartReading {
        let disk = try Disk(blob: bytes, name: name)
        return try disk.reading()
    }

    /// Reads a saved libatasmart blob from a file.
    package static func read(blobFile path: String) throws(SmartError) -> SmartReading {
        try read(blob: LocalFile.read(path), name: path)
    }
}

/// One open libatasmart disk; freed exactly once when it goes out of scope.
private struct Disk: ~Copyable {
    let handle: OpaquePointer
    let path: String

    init(device path: String) throws(SmartError) {
        var handle: OpaquePointer?
        let rc = sk_disk_open(path, &handle)
        let code = errno
        guard rc >= 0, let handle else {
            throw SmartError.system(path: path, operation: "open", errno: code)
        }
        self.handle = handle
        self.path = path
    }

    init(blob bytes: [UInt8], name: String) throws(SmartError) {
        var handle: OpaquePointer?
        let rc = sk_disk_open(nil, &handle)
        let code = errno
        guard rc >= 0, let handle else {
            throw SmartError.system(path: name, operation: "sk_disk_open", errno: code)
        }
        // libatasmart copies the sections it understands; `bytes` need not outlive the call.
        let setRC = bytes.withUnsafeBytes { sk_disk_set_blob(handle, $0.baseAddress, $0.count) }
        let setCode = errno
        guard setRC >= 0 else {
            sk_disk_free(handle)
            throw SmartError.system(path: name, operation: "sk_disk_set_blob", errno: setCode)
        }
        self.handle = handle
        self.path = name
    }

    deinit {
        sk_disk_free(handle)
    }

    func reading() throws(SmartError) -> SmartReading {
        var available: SkBool = 0
        guard sk_disk_smart_is_available(handle, &available) >= 0, available != 0 else {
            throw SmartError(path: path, operation: "sk_disk_smart_is_available", kind: .system(errno: ENOTSUP),
                             reason: "the drive does not support SMART")
        }
        guard sk_disk_smart_read_data(handle) >= 0 else {
            throw SmartError.system(path: path, operation: "sk_disk_smart_read_data", errno: errno)
        }

        let attributes = try parsedAttributes()
        let identity = identify()
        let capacity = capacitySectors()

        // The drive's own verdict. An unanswered status command is "unknown", not "good".
        var good: SkBool = 0
        let overallPassed: Bool? = sk_disk_smart_status(handle, &good) >= 0 ? good != 0 : nil

        var overall = SK_SMART_OVERALL_GOOD
        var overallText = "UNKNOWN"
        if sk_disk_smart_get_overall(handle, &overall) >= 0, let name = sk_smart_overall_to_string(overall) {
            overallText = String(cString: name)
        }

        // Counts come from libatasmart's own interpretation (`pretty_value`), and only for
        // attributes it still recognises after its quirk table: a quirked attribute has an
        // unknown unit and yields nil.
        func count(_ id: UInt8, unit: SkSmartAttributeUnit) -> UInt64? {
            attributes.first { $0.id == id && $0.unit == unit }?.pretty
        }
        let reallocated = SmartCounts.plausibleSectors(count(5, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS), capacity: capacity)
        let pending = SmartCounts.plausibleSectors(count(197, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS), capacity: capacity)
        let offline = SmartCounts.plausibleSectors(count(198, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS), capacity: capacity)
        let reported = count(187, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS)
        let timeouts = attributes.first { $0.id == 188 && $0.unit != SK_SMART_ATTRIBUTE_UNIT_UNKNOWN }
            .map { SmartCounts.commandTimeouts(raw: $0.raw) }

        // libatasmart's own bad-sector figure, unless we set one of its parts aside as
        // implausible above; then the sum of the parts we kept.
        var bad: UInt64 = 0
        var badSectors: UInt64? = sk_disk_smart_get_bad(handle, &bad) >= 0 ? bad : nil
        if count(5, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS) != reallocated
            || count(197, unit: SK_SMART_ATTRIBUTE_UNIT_SECTORS) != pending {
            badSectors = SmartCounts.badSectors(reallocated: reallocated, pending: pending)
        }

        var millikelvin: UInt64 = 0
        let temperature: Int? = sk_disk_smart_get_temperature(handle, &millikelvin) >= 0
            ? Int(((Double(millikelvin) - 273_150) / 1000).rounded()) : nil

        var milliseconds: UInt64 = 0
        let powerOnHours: UInt64? = sk_disk_smart_get_power_on(handle, &milliseconds) >= 0
            ? milliseconds / 3_600_000 : nil

        return SmartReading(
            source: .libatasmart,
            overallPassed: overallPassed,
            overall: overallText,
            attributes: attributes.map(\.attribute),
            reallocated: reallocated,
            reportedUncorrectable: reported,
            commandTimeouts: timeouts,
            pending: pending,
            offlineUncorrectable: offline,
            badSectors: badSectors,
            temperatureC: temperature,
            powerOnHours: powerOnHours,
            model: identity?.model,
            serial: identity?.serial,
            firmware: identity?.firmware,
            capacitySectors: capacity
        )
    }

    /// Every attribute, through libatasmart's parser (names, units and pretty values).
    private func parsedAttributes() throws(SmartError) -> [ParsedAttribute] {
        let sink = AttributeSink()
        let handle = self.handle
        let rc = withExtendedLifetime(sink) {
            sk_disk_smart_parse_attributes(handle, { _, attribute, context in
                guard let attribute, let context else { return }
                Unmanaged<AttributeSink>.fromOpaque(context).takeUnretainedValue()
                    .attributes.append(ParsedAttribute(attribute.pointee))
            }, Unmanaged.passUnretained(sink).toOpaque())
        }
        guard rc >= 0 else {
            throw SmartError.system(path: path, operation: "sk_disk_smart_parse_attributes", errno: errno)
        }
        return sink.attributes
    }

    private func identify() -> (model: String, serial: String, firmware: String)? {
        var available: SkBool = 0
        guard sk_disk_identify_is_available(handle, &available) >= 0, available != 0 else { return nil }
        var parsed: UnsafePointer<SkIdentifyParsedData>?
        guard sk_disk_identify_parse(handle, &parsed) >= 0, let data = parsed?.pointee else { return nil }
        return (cString(data.model), cString(data.serial), cString(data.firmware))
    }

    /// The drive's addressable sectors from its IDENTIFY data, which libatasmart hands back
    /// in the same tagged form a saved blob has (works for devices and blobs alike).
    private func capacitySectors() -> UInt64? {
        var pointer: UnsafeRawPointer?
        var size = 0
        guard sk_disk_get_blob(handle, &pointer, &size) >= 0, let pointer, size > 0 else { return nil }
        let blob = UnsafeRawBufferPointer(start: pointer, count: size)
        guard let identify = AtaBlob.section("IDFY", in: blob) else { return nil }
        return AtaIdentify.capacitySectors(identify)
    }
}

/// Collects attributes from libatasmart's callback; reached through the context pointer.
private final class AttributeSink {
    var attributes: [ParsedAttribute] = []
}

/// One attribute as libatasmart parsed it, copied out of the callback.
private struct ParsedAttribute {
    var attribute: SmartReading.Attribute
    var unit: SkSmartAttributeUnit
    var pretty: UInt64

    var id: UInt8 { attribute.id }
    var raw: UInt64 { attribute.raw }

    init(_ a: SkSmartAttributeParsedData) {
        let raw = withUnsafeBytes(of: a.raw) { bytes in
            bytes.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        attribute = SmartReading.Attribute(
            id: a.id,
            name: a.name.map { String(cString: $0) } ?? "attribute-\(a.id)",
            value: a.current_value,
            worst: a.worst_value,
            threshold: a.threshold,
            raw: raw,
            prefailure: a.prefailure != 0
        )
        unit = a.pretty_unit
        pretty = a.pretty_value
    }
}

/// A fixed-size C `char` array (imported as a tuple) as a Swift string.
private func cString<T>(_ tuple: T) -> String {
    withUnsafeBytes(of: tuple) { bytes in
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// The tagged blob format of `skdump --save`: 4-byte tag, 4-byte big-endian length, data.
enum AtaBlob {
    /// The data of the first section with this tag, if the blob has one.
    static func section(_ tag: String, in blob: UnsafeRawBufferPointer) -> [UInt8]? {
        let wanted = Array(tag.utf8)
        var offset = 0
        while offset + 8 <= blob.count {
            let length = (offset + 4..<offset + 8).reduce(0) { $0 << 8 | Int(blob[$1]) }
            let start = offset + 8
            guard length >= 0, start + length <= blob.count else { return nil }
            if Array(blob[offset..<offset + 4]) == wanted {
                return Array(blob[start..<start + length])
            }
            offset = start + length
        }
        return nil
    }
}

/// Figures from the 512-byte ATA IDENTIFY DEVICE data (16-bit little-endian words).
enum AtaIdentify {
    /// User-addressable logical sectors: words 100-103 when the 48-bit feature set is
    /// supported (word 83 bit 10), else words 60-61.
    static func capacitySectors(_ identify: [UInt8]) -> UInt64? {
        guard identify.count >= 512 else { return nil }
        func word(_ n: Int) -> UInt64 { UInt64(identify[2 * n]) | UInt64(identify[2 * n + 1]) << 8 }
        let lba48 = word(83) & (1 << 10) != 0
        let sectors = lba48
            ? word(100) | word(101) << 16 | word(102) << 32 | word(103) << 48
            : word(60) | word(61) << 16
        return sectors > 0 ? sectors : nil
    }
}

extension SmartError {
    /// An error from a call that set `errno`, with the system's text for it.
    static func system(path: String, operation: String, errno code: Int32) -> SmartError {
        SmartError(path: path, operation: operation, kind: .system(errno: code), reason: errnoText(code))
    }

    static func errnoText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }
}

/// Whole-file reads through the C library (library code does not use Foundation).
enum LocalFile {
    /// The file's bytes; at most `limit` of them (SMART inputs are small).
    static func read(_ path: String, limit: Int = 16 << 20) throws(SmartError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SmartError.system(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SmartError.system(path: path, operation: "read", errno: errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > limit {
                throw SmartError(path: path, operation: "read", kind: .malformed, reason: "larger than \(limit) bytes")
            }
        }
    }
}
