import BynarCeph
import BynarConfig
import BynarProcess
import BynarRuntime
import Logging

/// The detector's window on a Ceph cluster: every poll, and at once after a kernel disk
/// error, it asks the cluster (read-only: `osd dump`, `osd metadata`, `health detail`) and
/// reads the BlueStore labels of this host's disks, and hands both to the engine, which ties
/// each disk to its OSD by stable identity and takes a down OSD or inconsistent PGs as
/// evidence about the disk. A cluster that does not answer is logged and asked again; the
/// detector's own checks go on without it.
struct CephWatcher {
    let config: DetectorCephConfig
    let engine: DetectorEngine
    let logger: Logger

    func run() async {
        let hostname = config.osdHostname ?? localHostName()
        var cluster: RadosCluster?
        var clusterName = config.clusterName ?? ""
        var failing = false
        while !Task.isCancelled {
            do {
                if cluster == nil {
                    let config = config
                    let connected = try await offThread { try RadosCluster(configPath: config.configFile, clientName: config.clientName) }
                    if clusterName.isEmpty { clusterName = try await offThread { try connected.fsid() } }
                    cluster = connected
                    logger.info("watching the Ceph cluster", metadata: ["cluster": "\(clusterName)", "osd_hostname": "\(hostname)"])
                }
                guard let cluster else { continue }
                let devices = await engine.presentDevices()
                let view = try await offThread {
                    (osds: try cluster.osds().osds, health: try cluster.healthDetail(), facts: devices.mapValues(DeviceFacts.read))
                }
                await engine.cephView(osds: view.osds, health: view.health, facts: view.facts, hostname: hostname, clusterName: clusterName)
                if failing { logger.notice("the Ceph cluster answers again") }
                failing = false
            } catch {
                if !failing {
                    logger.warning("cannot ask the Ceph cluster; disks are judged without its view until it answers",
                                   metadata: ["config_file": "\(config.configFile)", "client": "\(config.clientName)", "error": "\(error)"])
                }
                failing = true
                cluster = nil
            }
            // A dying disk floods the kernel log; at most one question a second.
            try? await Task.sleep(for: .seconds(1))
            await engine.cephPoke.wait(upTo: .seconds(max(0, config.pollSeconds - 1)))
        }
    }
}
