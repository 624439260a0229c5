import BynarRuntime
import Orchestrator

await ServiceMain.run(OrchestratorService.self)
