import BynarBus
import BynarProto
import Testing

/// ``TopicClaims``: a payload naming another host, service or disk than its topic is
/// refused, whatever it carries; one that agrees passes.
struct TopicClaimsTests {
    static func envelope(_ payload: Bynar_V1_Envelope.OneOf_Payload) -> Envelope {
        var envelope = Envelope()
        envelope.payload = payload
        return envelope
    }

    /// The claims read a topic's levels split on its UTF-8 bytes; they are the levels the
    /// generic `split` gives, empty ones, multi-byte characters and odd ends included.
    @Test func aTopicsLevelsAreTheSameAsTheGenericSplit() {
        let topics = ["", "/", "//", "a", "a/", "/a", "bynar/v1/disk/stor1/sdb/health", "bynar/v1/disk//sdb/health",
                      "bynar/v1/disk/störage-é/nvme0n1p1/health", "bynar/v1/disk/h%2Fx/k%23y/health", "bynar/v1/reply/c/h/s/",
                      "e\u{301}/\u{1F600}/x", "$share/group/bynar/v1/disk/+/events"]
        for topic in topics {
            #expect(Topics.levels(of: topic) == topic.split(separator: "/", omittingEmptySubsequences: false), "\(topic)")
        }
    }

    static func disk(_ host: String, _ key: String) -> Bynar_V1_DiskIdentity {
        var disk = Bynar_V1_DiskIdentity()
        disk.host = host
        disk.key = key
        return disk
    }

    @Test func diskEventsMustNameTheTopicsHost() {
        var event = Bynar_V1_DiskHealthEvent()
        event.disk = Self.disk("h1", "serial-A")
        event.toState = .failed
        #expect(TopicClaims.mismatch(topic: Topics.diskEvents(host: "h1"), envelope: Self.envelope(.diskHealthEvent(event))) == nil)
        let forged = TopicClaims.mismatch(topic: Topics.diskEvents(host: "h2"), envelope: Self.envelope(.diskHealthEvent(event)))
        #expect(forged?.contains("disk.host \"h1\"") == true && forged?.contains("\"h2\"") == true, "\(forged ?? "nil")")
        event.disk.host = "h2"
        event.previousDisk = Self.disk("h1", "serial-OLD")
        #expect(TopicClaims.mismatch(topic: Topics.diskEvents(host: "h2"), envelope: Self.envelope(.diskHealthEvent(event)))?.contains("previous_disk.host") == true)
    }

    @Test func diskHealthMustNameTheTopicsHostAndDisk() {
        var health = Bynar_V1_DiskHealth()
        health.disk = Self.disk("h1", "serial-A")
        #expect(TopicClaims.mismatch(topic: Topics.diskHealth(host: "h1", disk: "serial-A"), envelope: Self.envelope(.diskHealth(health))) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.diskHealth(host: "h1", disk: "serial-B"), envelope: Self.envelope(.diskHealth(health)))?.contains("disk.key") == true)
        #expect(TopicClaims.mismatch(topic: Topics.diskHealth(host: "h2", disk: "serial-A"), envelope: Self.envelope(.diskHealth(health)))?.contains("disk.host") == true)
    }

    @Test func serviceStatusMustNameTheTopicsHostAndService() {
        var status = Bynar_V1_ServiceStatus()
        status.host = "h1"
        status.service = "disk-manager"
        status.state = .death
        #expect(TopicClaims.mismatch(topic: Topics.serviceStatus(host: "h1", service: "disk-manager"), envelope: Self.envelope(.serviceStatus(status))) == nil)
        // The attack: detector.h2 on its own status topic claiming to be h1's disk-manager.
        #expect(TopicClaims.mismatch(topic: Topics.serviceStatus(host: "h2", service: "detector"), envelope: Self.envelope(.serviceStatus(status))) != nil)
        status.host = "h2"
        #expect(TopicClaims.mismatch(topic: Topics.serviceStatus(host: "h2", service: "detector"), envelope: Self.envelope(.serviceStatus(status)))?.contains("service_status.service") == true)
    }

    @Test func progressCommandsAndHostStateMustNameTheTopicsHost() {
        var progress = Bynar_V1_JobProgress()
        progress.host = "h1"
        #expect(TopicClaims.mismatch(topic: Topics.diskManagerProgress(host: "h2"), envelope: Self.envelope(.jobProgress(progress))) != nil)
        #expect(TopicClaims.mismatch(topic: Topics.diskManagerProgress(host: "h1"), envelope: Self.envelope(.jobProgress(progress))) == nil)
        var request = Bynar_V1_DiskManagerRequest()
        request.host = "h1"
        #expect(TopicClaims.mismatch(topic: Topics.diskManagerCommands(host: "h2"), envelope: Self.envelope(.diskManagerRequest(request))) != nil)
        var state = Bynar_V1_HostState()
        state.host = "h1"
        #expect(TopicClaims.mismatch(topic: Topics.hostState(host: "h2"), envelope: Self.envelope(.hostState(state))) != nil)
    }

    /// Rule 10: a pool's state names its pool as the topic does; the host is only the topic's.
    @Test func poolStateMustNameTheTopicsPool() {
        var state = Bynar_V1_PoolState()
        state.pool = "tank"
        #expect(TopicClaims.mismatch(topic: Topics.poolState(host: "h1", pool: "tank"), envelope: Self.envelope(.poolState(state))) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.poolState(host: "h1", pool: "backup"), envelope: Self.envelope(.poolState(state)))?.contains("pool_state.pool \"tank\"") == true)
        #expect(Topics.poolState(host: "h1", pool: "tank") == "bynar/v1/pool/h1/tank")
    }

    /// Rule 11: an application's state and an operator's override name the topic's app.
    @Test func appStateAndOverrideMustNameTheTopicsApp() {
        var state = Bynar_V1_AppState()
        state.app = "web"
        #expect(TopicClaims.mismatch(topic: Topics.appState(host: "h1", app: "web"), envelope: Self.envelope(.appState(state))) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.appState(host: "h1", app: "db"), envelope: Self.envelope(.appState(state)))?.contains("app_state.app \"web\"") == true)
        var override = Bynar_V1_AppOverride()
        override.app = "web"
        #expect(TopicClaims.mismatch(topic: Topics.appOverride(host: "h1", app: "web"), envelope: Self.envelope(.appOverride(override))) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.appOverride(host: "h1", app: "db"), envelope: Self.envelope(.appOverride(override)))?.contains("app_override.app") == true)
        #expect(Topics.appOverride(host: "h1", app: "web") == "bynar/v1/app/h1/web/override")
    }

    @Test func topicsThatNameNoHostAreNotChecked() {
        var note = Bynar_V1_Notification()
        note.host = "anything"
        #expect(TopicClaims.mismatch(topic: Topics.notifications, envelope: Self.envelope(.notification(note))) == nil)
        #expect(TopicClaims.mismatch(topic: "test/other", envelope: Self.envelope(.notification(note))) == nil)
    }

    @Test func aReplyTopicNamesItsResponder() {
        var envelope = Self.envelope(.errorReply(Bynar_V1_ErrorReply()))
        envelope.sourceHost = "h1"
        envelope.sourceService = "disk-manager"
        let topic = Topics.reply(to: Topics.replies(clientId: "orchestrator-c1"), host: "h1", service: "disk-manager")
        #expect(topic == "bynar/v1/reply/orchestrator-c1/h1/disk-manager")
        #expect(TopicClaims.mismatch(topic: topic, envelope: envelope) == nil)
        envelope.sourceHost = "h2"
        #expect(TopicClaims.mismatch(topic: topic, envelope: envelope)?.contains("source_host \"h2\"") == true)
        #expect(Topics.responder(ofReply: topic, responseTopic: "bynar/v1/reply/orchestrator-c1") == Responder(host: "h1", service: "disk-manager"))
        #expect(Topics.responder(ofReply: "bynar/v1/reply/orchestrator-c1", responseTopic: "bynar/v1/reply/orchestrator-c1") == nil)
        #expect(Topics.responder(ofReply: "bynar/v1/reply/orchestrator-c1/h1", responseTopic: "bynar/v1/reply/orchestrator-c1") == nil)
    }

    @Test func onlyTheAskedServiceMayAnswer() {
        let dm = Topics.responder(forRequestTopic: Topics.diskManagerCommands(host: "h1"))
        #expect(dm == Responder(host: "h1", service: "disk-manager"))
        #expect(dm?.admits(Responder(host: "h1", service: "disk-manager")) == true)
        #expect(dm?.admits(Responder(host: "h2", service: "disk-manager")) == false)
        #expect(dm?.admits(Responder(host: "h1", service: "detector")) == false)
        let ticketing = Topics.responder(forRequestTopic: Topics.ticketCommands)
        #expect(ticketing?.admits(Responder(host: "any", service: "ticketing")) == true)
        #expect(ticketing?.admits(Responder(host: "any", service: "orchestrator")) == false)
        #expect(Topics.responder(forRequestTopic: "test/svc") == nil)
    }

    /// Rule 9: a ticket operator command only on its topic, its topic carries nothing else,
    /// and only ticketing answers it.
    @Test func ticketOperatorCommandsOnlyOnTheirTopic() {
        var command = Bynar_V1_TicketOperatorCommand()
        command.action = .resolve(.with { $0.ticket = "BYNAR-1" })
        let envelope = Self.envelope(.ticketOperatorCommand(command))
        #expect(TopicClaims.mismatch(topic: Topics.ticketOperatorCommands, envelope: envelope) == nil)
        #expect(TopicClaims.mismatch(topic: Topics.operatorCommands, envelope: envelope)?.contains("operator_command on bynar/v1/operator/cmd") == true)
        #expect(TopicClaims.mismatch(topic: Topics.ticketCommands, envelope: envelope)?.contains("ticket operator commands are taken only from") == true)
        let other = Self.envelope(.ticketRequest(Bynar_V1_TicketRequest()))
        #expect(TopicClaims.mismatch(topic: Topics.ticketOperatorCommands, envelope: other)?.contains("which carries only ticket_operator_command") == true)
        let ticketing = Topics.responder(forRequestTopic: Topics.ticketOperatorCommands)
        #expect(ticketing?.admits(Responder(host: "any", service: "ticketing")) == true)
        #expect(ticketing?.admits(Responder(host: "any", service: "orchestrator")) == false)
    }

    @Test func aResponseTopicMustBeABynarReplyTopic() {
        #expect(Topics.invalidResponseTopicReason("bynar/v1/reply/orchestrator-c1") == nil)
        for bad in ["bynar/v1/svc/h1/disk-manager", "bynar/v1/reply/a/b", "bynar/v1/reply/", "bynar/v1/reply/#", "bynar/v1/reply/x+y", "other"] {
            #expect(Topics.invalidResponseTopicReason(bad) != nil, "\(bad)")
        }
    }
}
