import BynarProto
import DiskManager
import Testing

struct DiskManagerOperationNameTests {
    @Test func everyOperationHasAName() {
        var request = Bynar_V1_DiskManagerRequest()
        #expect(DiskManagerService.operationName(request) == "(none)")
        request.list = .init()
        #expect(DiskManagerService.operationName(request) == "List")
        request.remove = .init()
        #expect(DiskManagerService.operationName(request) == "Remove")
    }
}
