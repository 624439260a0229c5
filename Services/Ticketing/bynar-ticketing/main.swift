import BynarRuntime
import Ticketing

await ServiceMain.run(TicketingService.self)
