#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One Redfish resource as the BMC sends it: only the properties Bynar reads, every one
/// optional (BMCs leave out what they do not model). One type serves every resource kind
/// (ServiceRoot, collections, ComputerSystem, Memory, Chassis, Power, Thermal, Storage,
/// Drive) so a BMC's extra or missing properties never fail a read.
struct RedfishResource: Decodable, Sendable, Equatable {
    struct Link: Decodable, Sendable, Equatable {
        var id: String
        enum CodingKeys: String, CodingKey { case id = "@odata.id" }
    }
    struct Status: Decodable, Sendable, Equatable {
        var state: String?
        var health: String?
        var healthRollup: String?
        enum CodingKeys: String, CodingKey { case state = "State", health = "Health", healthRollup = "HealthRollup" }
    }
    struct MemorySummary: Decodable, Sendable, Equatable {
        var status: Status?
        enum CodingKeys: String, CodingKey { case status = "Status" }
    }
    /// Resource.Location (DMTF): `PartLocation.ServiceLabel` is the label a technician
    /// reads on the chassis; the older `Info` text is kept for BMCs that only send that.
    struct Location: Decodable, Sendable, Equatable {
        struct PartLocation: Decodable, Sendable, Equatable {
            var serviceLabel: String?
            var locationType: String?
            var locationOrdinalValue: Int?
            enum CodingKeys: String, CodingKey { case serviceLabel = "ServiceLabel", locationType = "LocationType", locationOrdinalValue = "LocationOrdinalValue" }
        }
        var partLocation: PartLocation?
        var info: String?
        enum CodingKeys: String, CodingKey { case partLocation = "PartLocation", info = "Info" }

        /// The text a technician can find the part by, or nil when the BMC says nothing useful.
        var text: String? {
            if let label = partLocation?.serviceLabel, !label.isEmpty { return label }
            if let info, !info.isEmpty { return info }
            if let type = partLocation?.locationType, let ordinal = partLocation?.locationOrdinalValue { return "\(type) \(ordinal)" }
            return nil
        }
    }
    /// Drive.Location was an array of Location before Drive v1.4 (PhysicalLocation replaced
    /// it); both shapes are accepted, the first entry counts.
    struct Locations: Decodable, Sendable, Equatable {
        var first: Location?
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let one = try? container.decode(Location.self) {
                first = one
            } else {
                first = (try? container.decode([Location].self))?.first
            }
        }
    }

    var odataID: String?
    var id: String?
    var name: String?
    var memberID: String?
    var status: Status?
    var serialNumber: String?
    var model: String?
    var manufacturer: String?
    var physicalLocation: Location?
    var location: Locations?
    var failurePredicted: Bool?
    var predictedMediaLifeLeftPercent: Double?
    var memorySummary: MemorySummary?

    var members: [Link]?
    var systems: Link?
    var chassis: Link?
    var memory: Link?
    var storage: Link?
    var power: Link?
    var thermal: Link?
    var drives: [Link]?

    var storageControllers: [RedfishResource]?
    var powerSupplies: [RedfishResource]?
    var fans: [RedfishResource]?
    var temperatures: [RedfishResource]?

    // Thermal readings and their thresholds (Thermal v1: Celsius for temperatures, the
    // fan's ReadingUnits, RPM or Percent, for fans).
    var readingCelsius: Double?
    var reading: Double?
    var upperThresholdNonCritical: Double?
    var upperThresholdCritical: Double?
    var upperThresholdFatal: Double?
    var lowerThresholdNonCritical: Double?
    var lowerThresholdCritical: Double?
    var lowerThresholdFatal: Double?

    enum CodingKeys: String, CodingKey {
        case odataID = "@odata.id", id = "Id", name = "Name", memberID = "MemberId", status = "Status"
        case serialNumber = "SerialNumber", model = "Model", manufacturer = "Manufacturer"
        case physicalLocation = "PhysicalLocation", location = "Location"
        case failurePredicted = "FailurePredicted", predictedMediaLifeLeftPercent = "PredictedMediaLifeLeftPercent"
        case memorySummary = "MemorySummary", members = "Members", systems = "Systems", chassis = "Chassis"
        case memory = "Memory", storage = "Storage", power = "Power", thermal = "Thermal", drives = "Drives"
        case storageControllers = "StorageControllers", powerSupplies = "PowerSupplies", fans = "Fans", temperatures = "Temperatures"
        case readingCelsius = "ReadingCelsius", reading = "Reading"
        case upperThresholdNonCritical = "UpperThresholdNonCritical", upperThresholdCritical = "UpperThresholdCritical"
        case upperThresholdFatal = "UpperThresholdFatal", lowerThresholdNonCritical = "LowerThresholdNonCritical"
        case lowerThresholdCritical = "LowerThresholdCritical", lowerThresholdFatal = "LowerThresholdFatal"
    }

    static func decode(_ bytes: [UInt8]) throws -> RedfishResource {
        try JSONDecoder().decode(RedfishResource.self, from: Data(bytes))
    }
}

/// The kinds of part Bynar judges.
enum HardwarePartKind: String, Sendable, Equatable, CaseIterable {
    case system, memory, chassis, powerSupply = "power_supply", fan, temperature, storageController = "storage_controller", drive
}

/// One part of the server as read from the BMC, ready to judge: what it is, where a
/// technician finds it, and what the BMC says about it.
struct HardwarePart: Sendable, Equatable {
    var kind: HardwarePartKind
    /// Stable identity: the resource's `@odata.id` (for parts inside an array, the
    /// resource's URL and the member's `MemberId` or index: `.../Power#/PowerSupplies/0`).
    var id: String
    var name: String
    var location: String?
    var serial: String?
    var model: String?
    var state: String?
    var health: String?
    var failurePredicted: Bool?
    var lifeLeftPercent: Double?
    var reading: Double?
    var upperNonCritical: Double?
    var upperCritical: Double?
    var lowerNonCritical: Double?
    var lowerCritical: Double?

    /// The part as described by `resource`; `id` for members of an inline array.
    init(_ kind: HardwarePartKind, _ resource: RedfishResource, id: String? = nil) {
        self.kind = kind
        self.id = id ?? resource.odataID ?? resource.id ?? "?"
        name = resource.name ?? resource.id ?? resource.memberID ?? self.id
        location = resource.physicalLocation?.text ?? resource.location?.first?.text
        serial = resource.serialNumber.flatMap { $0.isEmpty ? nil : $0 }
        model = resource.model
        state = resource.status?.state
        health = resource.status?.health
        failurePredicted = resource.failurePredicted
        lifeLeftPercent = resource.predictedMediaLifeLeftPercent
        reading = kind == .temperature ? resource.readingCelsius : resource.reading
        upperNonCritical = resource.upperThresholdNonCritical
        upperCritical = resource.upperThresholdCritical ?? resource.upperThresholdFatal
        lowerNonCritical = resource.lowerThresholdNonCritical
        lowerCritical = resource.lowerThresholdCritical ?? resource.lowerThresholdFatal
    }

    init(kind: HardwarePartKind, id: String, name: String) {
        self.kind = kind
        self.id = id
        self.name = name
    }
}
