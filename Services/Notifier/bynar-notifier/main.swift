import BynarRuntime
import Notifier
#if canImport(Glibc)
import Glibc
#endif

if let status = await NotifierCommands.run(Array(CommandLine.arguments.dropFirst())) {
    exit(status)
}
await ServiceMain.run(NotifierService.self)
