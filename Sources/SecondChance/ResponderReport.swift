import Glibc
import Telemetry

/// The responder's per-listener counters (the queue's and the tc program's, summed) and the
/// namespace's TcpExt cookie counters, for the stats server.
public enum ResponderReport {
    /// Each record's counters, the program's counts added.
    static func values(_ monitor: ListenerMonitor, kernel: FastPath?) -> [(ListenerRecord, [UInt64])] {
        let records = monitor.board.allRecords
        let counts = kernel?.listenerCounts(records.map(\.key)) ?? [:]
        return records.map { record in
            var values = ListenerRecord.Counter.allCases.map { record.value($0) }
            if let kernel = counts[record.key] {
                for (slot, counter) in FastPathCounters.listenerCounts where Int(slot.rawValue) < kernel.count {
                    values[counter.rawValue] &+= kernel[Int(slot.rawValue)]
                }
            }
            return (record, values)
        }
    }

    public static func write(_ monitor: ListenerMonitor, kernel: FastPath?, to out: inout PrometheusText) {
        let rows = values(monitor, kernel: kernel)
        let records = rows.map(\.0)
        out.family(
            "second_chance_listener_syn_cookies_active", .gauge,
            help: "1 while the responder answers this listener's SYNs.")
        for record in records {
            out.sample(
                "second_chance_listener_syn_cookies_active", ["listener": record.key.description],
                record.isActive ? 1 : 0)
        }
        for counter in ListenerRecord.Counter.allCases {
            out.family(counter.metric, .counter, help: counter.help)
            for (record, values) in rows {
                out.sample(counter.metric, ["listener": record.key.description], values[counter.rawValue])
            }
        }
        out.family(
            "second_chance_listener_scans_total", .counter,
            help: "Scans of the listeners (sock_diag) the responder's monitor completed.")
        out.sample("second_chance_listener_scans_total", [:], monitor.scans)
        out.family(
            "second_chance_listener_request_walks_total", .counter,
            help: "Walks of every established socket (sock_diag) to count SYN queues the listener probe could not read."
        )
        out.sample("second_chance_listener_request_walks_total", [:], monitor.requestWalks)
        out.family(
            "second_chance_kernel_tcpext", .counter,
            help: "TcpExt counters of the namespace whose listeners are watched.")
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out.sample("second_chance_kernel_tcpext", ["name": name], monitor.kernelCounter(index))
        }
    }

    /// One line per listener the responder has seen overflow (or serves), then the kernel counters.
    public static func text(_ monitor: ListenerMonitor, kernel: FastPath?) -> String {
        var out = """
            syn_cookies_mode: \(monitor.configuration.mode.rawValue)
            listener_scans: \(monitor.scans)
            listener_request_walks: \(monitor.requestWalks)

            """
        for (record, values) in values(monitor, kernel: kernel) {
            out += "listener \(record.key) active \(record.isActive ? 1 : 0)"
            for counter in ListenerRecord.Counter.allCases {
                out += " \(counter.shortName) \(values[counter.rawValue])"
            }
            out += "\n"
        }
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out += "kernel_\(name): \(monitor.kernelCounter(index))\n"
        }
        return out
    }
}
