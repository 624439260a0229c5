import BynarRuntime
import Notifier

await ServiceMain.run(NotifierService.self)
