// libudev, wrapped once. This is the only file that imports CUdev; everything else sees the
// Swift values below. libudev objects are not thread-safe, so a `UdevContext` and whatever it
// produced are used by one thread at a time (the scan's caller, or the event thread).

import CUdev
import Glibc

/// What libudev could not do, with the call that failed.
struct UdevError: Error, CustomStringConvertible {
    let description: String
    init(_ call: String, code: Int32 = 0) {
        description = code == 0 ? "libudev: \(call) failed" : "libudev: \(call) failed: \(String(cString: strerror(code < 0 ? -code : code)))"
    }
}

/// One block device as libudev saw it at one moment: plain values, no C pointers.
struct UdevBlockDevice: Sendable, Equatable {
    /// Kernel name ("sda", "sda1", "loop3").
    var sysname: String
    /// Its directory in sysfs ("/sys/devices/.../block/sda").
    var sysPath: String
    /// Device node ("/dev/sda"), when the kernel named one.
    var devNode: String?
    /// "disk" or "partition".
    var devType: String
    var devNumber: DeviceNumber
    /// For a partition: the sysname of the whole disk it is on.
    var parentSysname: String?
    /// The udev properties: the uevent keys, plus the udev database's when udevd has filled it.
    var properties: [String: String]
    /// The requested sysfs attributes that exist, whitespace-trimmed (libudev's reading).
    var attributes: [String: String]
}

/// A libudev context (`udev_new` … `udev_unref`). One thread at a time.
final class UdevContext {
    private let udev: OpaquePointer

    init() throws {
        guard let udev = udev_new() else { throw UdevError("udev_new", code: errno) }
        self.udev = udev
    }

    deinit { udev_unref(udev) }

    /// Every block device of type disk or partition, with those of the sysfs attributes named
    /// (relative to the device's sysfs directory, e.g. "device/model") that exist:
    /// `diskAttributes` for disks, `partitionAttributes` for partitions.
    func blockDevices(diskAttributes: [String], partitionAttributes: [String]) throws -> [UdevBlockDevice] {
        guard let enumerate = udev_enumerate_new(udev) else { throw UdevError("udev_enumerate_new", code: errno) }
        defer { udev_enumerate_unref(enumerate) }
        var rc = udev_enumerate_add_match_subsystem(enumerate, "block")
        guard rc >= 0 else { throw UdevError("udev_enumerate_add_match_subsystem", code: rc) }
        rc = udev_enumerate_scan_devices(enumerate)
        guard rc >= 0 else { throw UdevError("udev_enumerate_scan_devices", code: rc) }

        var result: [UdevBlockDevice] = []
        var entry = udev_enumerate_get_list_entry(enumerate)
        while let current = entry {
            defer { entry = udev_list_entry_get_next(current) }
            guard let syspath = udev_list_entry_get_name(current),
                  let device = udev_device_new_from_syspath(udev, syspath)
            else { continue } // gone between listing and opening: it is no longer there
            defer { udev_device_unref(device) }
            if let snapshot = Self.snapshot(device, diskAttributes: diskAttributes, partitionAttributes: partitionAttributes) {
                result.append(snapshot)
            }
        }
        return result
    }

    /// A device's values, or nil when it is not a block disk or partition.
    fileprivate static func snapshot(_ device: OpaquePointer, diskAttributes: [String], partitionAttributes: [String]) -> UdevBlockDevice? {
        guard let sysname = string(udev_device_get_sysname(device)),
              let sysPath = string(udev_device_get_syspath(device)),
              let devType = string(udev_device_get_devtype(device)),
              devType == "disk" || devType == "partition"
        else { return nil }
        var parentSysname: String?
        if devType == "partition",
           let parent = udev_device_get_parent_with_subsystem_devtype(device, "block", "disk") {
            // Borrowed from `device`: not unreferenced here.
            parentSysname = string(udev_device_get_sysname(parent))
        }
        var values: [String: String] = [:]
        for name in devType == "disk" ? diskAttributes : partitionAttributes {
            if let value = string(udev_device_get_sysattr_value(device, name)) {
                values[name] = value.trimmingWhitespace()
            }
        }
        return UdevBlockDevice(
            sysname: sysname,
            sysPath: sysPath,
            devNode: string(udev_device_get_devnode(device)),
            devType: devType,
            devNumber: DeviceNumber(udev_device_get_devnum(device)),
            parentSysname: parentSysname,
            properties: properties(device),
            attributes: values
        )
    }

    fileprivate static func properties(_ device: OpaquePointer) -> [String: String] {
        var result: [String: String] = [:]
        var entry = udev_device_get_properties_list_entry(device)
        while let current = entry {
            if let name = string(udev_list_entry_get_name(current)) {
                result[name] = string(udev_list_entry_get_value(current)) ?? ""
            }
            entry = udev_list_entry_get_next(current)
        }
        return result
    }

    fileprivate static func string(_ pointer: UnsafePointer<CChar>?) -> String? {
        pointer.map { String(cString: $0) }
    }
}

/// One uevent as the kernel sent it (the "kernel" netlink source: no udevd involved).
struct UdevEvent: Sendable, Equatable {
    var action: String
    var sysname: String
    var devNode: String?
    var devType: String?
    var devNumber: DeviceNumber
    var seqnum: UInt64
    var properties: [String: String]
}

/// A uevent netlink socket filtered to the block subsystem: the kernel's own events, or
/// udevd's (sent once udevd has updated its database and /dev/disk links for the event).
///
/// Owns its own libudev context. One thread at a time: after `BlockEventMonitor` hands it to
/// its event thread, only that thread touches it, hence `@unchecked Sendable`.
final class UdevKernelMonitor: @unchecked Sendable {
    /// Whose events: the kernel's ("kernel", no udevd needed) or udevd's ("udev"; a socket
    /// that receives nothing when udevd is not running).
    enum Source: String {
        case kernel
        case udev
    }

    /// What one look at the socket found.
    enum Next {
        /// A block device event.
        case event(UdevEvent)
        /// Nothing arrived within the wait.
        case quiet
        /// A message that was no block event (the kernel's socket carries every subsystem's;
        /// libudev drops the others) or that failed libudev's checks.
        case other
        /// The socket overflowed (ENOBUFS): events were lost, how many is unknown.
        case lost
        /// The socket cannot be used any more.
        case failed
    }

    private let udev: OpaquePointer
    private let monitor: OpaquePointer
    /// The socket to poll() for readability.
    let fileDescriptor: Int32

    /// Opens and binds the socket; events sent after this returns are queued in the
    /// socket (up to `receiveBufferBytes`) until read.
    init(source: Source = .kernel, receiveBufferBytes: Int32) throws {
        guard let udev = udev_new() else { throw UdevError("udev_new", code: errno) }
        guard let monitor = udev_monitor_new_from_netlink(udev, source.rawValue) else {
            let code = errno
            udev_unref(udev)
            throw UdevError("udev_monitor_new_from_netlink(\(source.rawValue))", code: code)
        }
        var ready = false
        defer {
            if !ready {
                udev_monitor_unref(monitor)
                udev_unref(udev)
            }
        }
        var rc = udev_monitor_filter_add_match_subsystem_devtype(monitor, "block", nil)
        guard rc >= 0 else { throw UdevError("udev_monitor_filter_add_match_subsystem_devtype", code: rc) }
        // Best effort: a larger socket buffer only makes kernel-side drops rarer.
        _ = udev_monitor_set_receive_buffer_size(monitor, receiveBufferBytes)
        rc = udev_monitor_enable_receiving(monitor)
        guard rc >= 0 else { throw UdevError("udev_monitor_enable_receiving", code: rc) }
        let fd = udev_monitor_get_fd(monitor)
        guard fd >= 0 else { throw UdevError("udev_monitor_get_fd", code: fd) }
        self.udev = udev
        self.monitor = monitor
        fileDescriptor = fd
        ready = true
    }

    deinit {
        udev_monitor_unref(monitor)
        udev_unref(udev)
    }

    /// The next queued block event, waiting up to `waitMs` for one (0: only what is queued
    /// now). The kernel queues an event before the system call that caused it returns, so
    /// `next(waitMs: 0)` sees every event of every change already made.
    func next(waitMs: Int32) -> Next {
        var descriptor = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        var ready: Int32
        repeat {
            ready = poll(&descriptor, 1, waitMs)
        } while ready < 0 && errno == EINTR
        if ready < 0 || descriptor.revents & Int16(POLLNVAL) != 0 { return .failed }
        if ready == 0 { return .quiet }
        // POLLERR: the socket overflowed (ENOBUFS); the next read reports and clears it.
        if descriptor.revents & Int16(POLLERR) != 0 {
            _ = udev_monitor_receive_device(monitor).map { udev_device_unref($0) }
            return .lost
        }
        guard let event = receive() else { return .other }
        return .event(event)
    }

    /// The next queued event, or nil when none could be read (nothing queued, a message that
    /// failed libudev's checks, or the socket overflowed).
    private func receive() -> UdevEvent? {
        guard let device = udev_monitor_receive_device(monitor) else { return nil }
        defer { udev_device_unref(device) }
        guard let sysname = UdevContext.string(udev_device_get_sysname(device)) else { return nil }
        return UdevEvent(
            action: UdevContext.string(udev_device_get_action(device)) ?? "",
            sysname: sysname,
            devNode: UdevContext.string(udev_device_get_devnode(device)),
            devType: UdevContext.string(udev_device_get_devtype(device)),
            devNumber: DeviceNumber(udev_device_get_devnum(device)),
            seqnum: UInt64(udev_device_get_seqnum(device)),
            properties: UdevContext.properties(device)
        )
    }
}

extension String {
    /// Without leading and trailing spaces, tabs, newlines and NULs (sysfs values end in "\n";
    /// SCSI vendor and model are space-padded).
    package func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "\0" }
        guard let first = firstIndex(where: { !isSpace($0) }),
              let last = lastIndex(where: { !isSpace($0) })
        else { return "" }
        return String(self[first...last])
    }
}
