import BynarRuntime
import DiskManager

await ServiceMain.run(DiskManagerService.self)
