import BynarRuntime
import Detector
#if canImport(Glibc)
import Glibc
#endif

if let status = DetectorCommands.run(Array(CommandLine.arguments.dropFirst())) {
    exit(status)
}
await ServiceMain.run(DetectorService.self)
