import BynarProto
import Foundation

/// One populated instance of every payload type the envelope can carry. A test checks that
/// this list covers `allBusPayloadTypes`, so a new message type cannot be left out.
enum Samples {
    static var disk: Bynar_V1_DiskIdentity {
        var disk = Bynar_V1_DiskIdentity()
        disk.host = "store-17"
        disk.wwn = "0x5000c500a1b2c3d4"
        disk.serial = "ZA1B2C3D"
        disk.model = "ST4000NM0035"
        disk.byPath = "pci-0000:00:1f.2-ata-3"
        disk.byID = ["wwn-0x5000c500a1b2c3d4", "ata-ST4000NM0035_ZA1B2C3D"]
        disk.sizeBytes = 4_000_787_030_016
        disk.rotational = true
        disk.transport = .ata
        disk.key = "0x5000c500a1b2c3d4"
        var partition = Bynar_V1_Partition()
        partition.devPath = "/dev/sdc1"
        partition.filesystem = "xfs"
        partition.mountpoints = ["/var/lib/ceph/osd/ceph-12"]
        disk.partitions = [partition]
        return disk
    }

    static var health: Bynar_V1_DiskHealth {
        var health = Bynar_V1_DiskHealth()
        health.disk = disk
        health.state = .failing
        var reason = Bynar_V1_HealthReason()
        reason.rule = "smart.attr_rising.5"
        reason.severity = .failing
        reason.detail = "reallocated sectors rose from 8 to 63"
        health.reasons = [reason]
        health.smart.source = .libatasmart
        health.smart.reallocated = 63
        health.smart.temperatureC = 40
        var attribute = Bynar_V1_SmartAttribute()
        attribute.id = 5
        attribute.name = "reallocated-sector-count"
        attribute.raw = 63
        attribute.prefailure = true
        health.smart.attributes = [attribute]
        health.inUseBy = "osd.12"
        return health
    }

    static var all: [any BusPayload] {
        var status = Bynar_V1_ServiceStatus()
        status.service = "detector"
        status.host = "store-17"
        status.state = .death
        status.session = 42
        status.deathCause = .connectionLost

        var event = Bynar_V1_DiskHealthEvent()
        event.disk = disk
        event.fromState = .suspect
        event.toState = .failing
        event.reasons = health.reasons

        var request = Bynar_V1_DiskManagerRequest()
        request.requestID = "r-1"
        request.host = "store-17"
        request.simulate = true
        var remove = Bynar_V1_DiskManagerRequest.Remove()
        remove.disk.wwn = "0x5000c500a1b2c3d4"
        request.remove = remove
        request.auth.keyID = "orchestrator-1"
        request.auth.nonce = Data([1, 2, 3])
        request.auth.signature = Data(repeating: 7, count: 64)

        var response = Bynar_V1_DiskManagerResponse()
        response.requestID = "r-1"
        response.outcome = .refused
        response.reason = "not safe: 12 PGs would become inactive"
        response.steps = ["osd ok-to-stop 12"]
        response.safeToRemove.safe = false

        var progress = Bynar_V1_JobProgress()
        progress.jobID = "j-9"
        progress.step = "wait for safe-to-destroy"
        progress.stepIndex = 2
        progress.stepCount = 5
        progress.state = .running

        var incident = Bynar_V1_IncidentEvent()
        incident.incident.id = "inc-1"
        incident.incident.disk = disk
        incident.incident.state = .queued
        incident.fromState = .opened
        incident.message = "cluster brake: 2 of 2 disks already out"

        var ticketRequest = Bynar_V1_TicketRequest()
        ticketRequest.incidentID = "inc-1"
        ticketRequest.action = .open
        ticketRequest.health = health

        var ticketEvent = Bynar_V1_TicketEvent()
        ticketEvent.incidentID = "inc-1"
        ticketEvent.ticketKey = "OPS-123"
        ticketEvent.state = .resolved

        var notification = Bynar_V1_Notification()
        notification.severity = .error
        notification.title = "disk failed on store-17"
        notification.nextAction = "removing osd.12 from Ceph"
        notification.disk = disk

        var second = notification
        second.title = "disk failed on store-18"
        var notificationBatch = Bynar_V1_NotificationBatch()
        notificationBatch.notifications = [notification, second]

        var hook = Bynar_V1_HookResult()
        hook.eventID = "e-1"
        hook.hook = "/etc/bynar/hooks/host-down"
        hook.arguments = ["detector", "10.0.0.17", "down"]
        hook.exitStatus = 3

        var hostState = Bynar_V1_HostState()
        hostState.host = "store-17"
        hostState.up = false
        var service = Bynar_V1_HostState.Service()
        service.service = "detector"
        service.up = false
        hostState.services = [service]

        var deadLetter = Bynar_V1_DeadLetter()
        deadLetter.topic = "bynar/v1/notify"
        deadLetter.payload = Data([0xff, 0x00])
        deadLetter.reason = "not an envelope"

        var errorReply = Bynar_V1_ErrorReply()
        errorReply.code = .unauthorized
        errorReply.message = "signature does not verify"

        var ticketResponse = Bynar_V1_TicketResponse()
        ticketResponse.incidentID = "inc-1"
        ticketResponse.ticketKey = "OPS-123"
        ticketResponse.created = true

        var operatorCommand = Bynar_V1_OperatorCommand()
        operatorCommand.requestID = "op-1"
        operatorCommand.reason = "osd.12 fixed by hand"
        operatorCommand.retry.incidentID = "inc-1"
        operatorCommand.auth.keyID = "alice"
        operatorCommand.auth.nonce = Data([4, 5, 6])
        operatorCommand.auth.signature = Data(repeating: 9, count: 64)

        var window = Bynar_V1_Maintenance()
        window.host = "store-17"
        window.untilUnixMs = 1_800_000_000_000
        window.reason = "firmware upgrade"
        window.by = "alice"

        var operatorResponse = Bynar_V1_OperatorResponse()
        operatorResponse.requestID = "op-1"
        operatorResponse.outcome = .refused
        operatorResponse.reason = "resolve refused: the disk-manager reports serial-X REMOVED"
        operatorResponse.incident = incident.incident
        operatorResponse.audit = [.with { $0.by = "alice"; $0.action = "retry"; $0.outcome = "done: retrying from remove" }]
        operatorResponse.maintenance = [window]

        var maintenance = Bynar_V1_MaintenanceState()
        maintenance.windows = [window]
        maintenance.updatedUnixMs = 1_700_000_000_000

        var receipt = Bynar_V1_Receipt()
        receipt.messageID = "7f1c2b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b"

        var ticketOperatorCommand = Bynar_V1_TicketOperatorCommand()
        ticketOperatorCommand.requestID = "tkop-1"
        ticketOperatorCommand.reason = "disk swapped in slot 4"
        ticketOperatorCommand.resolve.ticket = "BYNAR-3"
        ticketOperatorCommand.auth = operatorCommand.auth

        var ticketOperatorResponse = Bynar_V1_TicketOperatorResponse()
        ticketOperatorResponse.requestID = "tkop-1"
        ticketOperatorResponse.outcome = .success
        ticketOperatorResponse.reason = "BYNAR-3 resolved by alice: disk swapped in slot 4"
        ticketOperatorResponse.ticket = ticketEvent

        var pool = Bynar_V1_PoolState()
        pool.pool = "tank"
        pool.kind = "zfs"
        pool.health = "DEGRADED"
        pool.capacityPercent = 41
        pool.writeErrors = 186
        pool.lastScrubErrors = -1
        pool.alarms = ["pool tank is DEGRADED"]
        pool.members = [.with { $0.name = "sdc"; $0.state = "UNAVAIL"; $0.writeErrors = 186 }]

        var app = Bynar_V1_AppState()
        app.app = "web"
        app.health = .down
        app.checked = .down
        app.check = "http GET http://127.0.0.1:8080/health expecting 200"
        app.reason = "http://127.0.0.1:8080/health: Connection refused"
        app.consecutiveFailures = 3
        app.tolerance = 3

        var appOverride = Bynar_V1_AppOverride()
        appOverride.app = "web"
        appOverride.mode = .appOverrideNg
        appOverride.reason = "draining for a kernel update"

        var psu = Bynar_V1_HardwarePartFinding()
        psu.part = .with { $0.kind = "PowerSupply"; $0.id = "1"; $0.name = "PSU 2"; $0.location = "Power Supply Bay 2"; $0.serial = "1Z00002"; $0.model = "PWS-1K62A" }
        psu.severity = .failed
        psu.rule = "R2"
        psu.reason = "Status.Health is Critical"
        var hardware = Bynar_V1_HardwareState()
        hardware.readUnixMs = 1_765_000_000_000
        hardware.bmcReachable = true
        hardware.partsRead = 14
        hardware.findings = [psu]
        var hardwareEvent = Bynar_V1_HardwareEvent()
        hardwareEvent.finding = psu
        hardwareEvent.from = .ok
        hardwareEvent.to = .failed
        hardwareEvent.atUnixMs = 1_765_000_000_000

        return [status, health, event, request, response, progress, incident, ticketRequest, ticketEvent,
                notification, hook, hostState, deadLetter, errorReply, ticketResponse, operatorCommand, operatorResponse, maintenance, receipt,
                ticketOperatorCommand, ticketOperatorResponse, pool, app, appOverride, hardware, hardwareEvent, notificationBatch]
    }
}
