#if canImport(Glibc)
import Glibc
#endif

/// Gives back the code pages start-up touched and idle running does not need.
///
/// A long-running agent maps Swift's runtime, Foundation, SQLite and its own code. Start-up
/// runs a little of everything, and the kernel's fault-around maps up to 64 KiB of cached
/// neighbours per fault, so tens of MB of code stay resident in an agent that then sleeps.
/// For each read-only file mapping that holds no copy-on-write page (code, and read-only
/// data the loader never relocated: nothing in it differs from the file, so nothing is
/// lost) this asks the kernel for random access and drops its page-table entries. What runs
/// again is faulted back in from the page cache: on Linux 6.18 still 64 KiB (fault-around)
/// or a whole large folio per fault, random access or not (measured: runs of 16 to 160
/// pages; docs/performance.md), so work that runs now and then should release after it.
/// Mappings with private (relocated or written) pages are never touched.
public enum ResidentCode {
    /// Returns how many kB of mappings were released.
    @discardableResult
    public static func release() -> Int {
        guard let smaps = fopen("/proc/self/smaps", "r") else { return 0 }
        var candidates: [(UnsafeMutableRawPointer, Int, anonymous: Int)] = []
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), smaps) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 6, fields[0].contains("-"), fields[5].hasPrefix("/") {
                // A new mapping: address perms offset dev inode path.
                guard fields[1] == "r-xp" || fields[1] == "r--p" else { continue }
                let bounds = fields[0].split(separator: "-")
                if bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16), end > start,
                   let address = UnsafeMutableRawPointer(bitPattern: start) {
                    candidates.append((address, Int(end - start), anonymous: -1))
                }
            } else if fields.count >= 2, fields[0] == "Anonymous:", !candidates.isEmpty, candidates[candidates.count - 1].anonymous == -1 {
                candidates[candidates.count - 1].anonymous = Int(fields[1]) ?? 1
            } else if fields.count >= 6, fields[0].contains("-") {
                // A mapping we skip (anonymous, writable): stop attributing fields to the last candidate.
                if let last = candidates.last, last.anonymous == -1 { candidates[candidates.count - 1].anonymous = 1 }
            }
        }
        fclose(smaps)
        var released = 0
        for (address, length, anonymous) in candidates where anonymous == 0 {
            if madvise(address, length, MADV_RANDOM) == 0 && madvise(address, length, MADV_DONTNEED) == 0 {
                released += length / 1024
            }
        }
        // Freed heap memory the allocator still holds (every thread that allocated may have
        // its own arena) goes back to the kernel too.
        _ = glibcMallocTrim(0)
        return released
    }

    /// At most this many malloc arenas: a service that runs blocking work on short-lived
    /// threads would otherwise collect one arena (and its freed-but-kept pages) per thread.
    public static func limitArenas(_ count: Int32 = 2) {
        _ = glibcMallopt(-8 /* M_ARENA_MAX */, count)
    }
}

// glibc's malloc.h is not part of the Glibc module; these two have plain C signatures.
@_silgen_name("malloc_trim") private func glibcMallocTrim(_ pad: Int) -> Int32
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
