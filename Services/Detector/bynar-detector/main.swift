import BynarRuntime
import Detector

await ServiceMain.run(DetectorService.self)
