import ArgumentParser
import BynarBus
import BynarConfig
import BynarProto
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

struct Tap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print bus messages as JSON lines, decoded.")

    @OptionGroup var brokerOptions: BrokerOptions

    @Argument(help: "Topic filters.")
    var topics: [String] = ["bynar/v1/#"]

    @Option(help: "Stop after this many messages.")
    var count: Int?

    func run() async throws {
        try await reportingFailures { try await body() }
    }

    func body() async throws {
        let bus = try await brokerOptions.connect(purpose: "tap")
        var seen = 0
        await withTaskGroup(of: Void.self) { group in
            let (lines, output) = AsyncStream.makeStream(of: String.self)
            for filter in topics {
                group.addTask {
                    do {
                        for await message in try await bus.subscribeEnvelopes(filter) {
                            output.yield(Tap.jsonLine(message))
                        }
                    } catch {
                        output.yield("{\"error\": \(Tap.quote("\(error)"))}")
                    }
                }
            }
            for await line in lines {
                print(line)
                fflush(nil)
                seen += 1
                if let count, seen >= count { break }
            }
            group.cancelAll()
        }
        await bus.shutdown()
    }

    static func jsonLine(_ message: EnvelopeSubscription.Element) -> String {
        let body = (try? message.envelope.jsonString()) ?? "null"
        return "{\"topic\": \(quote(message.topic)), \"retained\": \(message.retained), \"envelope\": \(body)}"
    }

    static func quote(_ text: String) -> String { JSONText.quoted(text) }
}

