import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An application for the checks to watch: Python's `http.server` answering `/health` with
/// `body` on a free 127.0.0.1 port, started and waited for until it answers. ``crash()``
/// kills it with SIGKILL (what a crashed application server looks like), ``restart()``
/// brings it back on the same port; killed on deinit.
public final class WebApp: @unchecked Sendable {
    public let port: Int
    private let directory: String
    private var server: ChildProcess?

    /// Serves `directory`/www (made here) and logs to `directory`/web.log.
    public init(directory: String, body: String = "ok\n") throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory + "/www", withIntermediateDirectories: true)
        try body.write(toFile: directory + "/www/health", atomically: true, encoding: .utf8)
        port = try freeLoopbackPort()
        try restart()
    }

    public func restart() throws {
        let server = try ChildProcess("/usr/bin/python3", ["-m", "http.server", "--bind", "127.0.0.1", "--directory", directory + "/www", "\(port)"],
                                      outputPath: directory + "/web.log")
        self.server = server
        for _ in 0..<100 {
            if (try? plainHTTP(port: port, method: "GET", path: "/"))?.0 == 200 { break }
            usleep(50_000)
        }
    }

    public func crash() { _ = server?.stop(SIGKILL) }

    deinit { crash() }
}

/// A TCP relay on 127.0.0.1:`port` to 127.0.0.1:`target` (a few lines of Python), started
/// and waited for until it accepts: put between a service and its broker, SIGKILL cuts that
/// one service off (the kernel closes both ends, so the broker sees it go at once) while
/// the others keep the broker; started again on the same port, the service reconnects.
public func startTCPRelay(port: Int, to target: Int, log: String) throws -> ChildProcess {
    let script = """
        import socket, sys, threading
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(sys.argv[1])))
        listener.listen(16)
        def pump(source, sink):
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
            except OSError:
                client.close()
                continue
            for pair in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=pair, daemon=True).start()
        """
    let relay = try ChildProcess("/usr/bin/python3", ["-c", script, "\(port)", "\(target)"], outputPath: log)
    for _ in 0..<100 {
        if canConnect(port: port) { break }
        usleep(50_000)
    }
    return relay
}
