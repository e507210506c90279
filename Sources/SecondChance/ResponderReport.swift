import Glibc
import Telemetry

/// The responder's per-listener counters and the namespace's TcpExt cookie counters, for the stats server.
public enum ResponderReport {
    public static func write(_ monitor: ListenerMonitor, to out: inout PrometheusText) {
        let records = monitor.board.allRecords
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
            for record in records {
                out.sample(counter.metric, ["listener": record.key.description], record.value(counter))
            }
        }
        out.family(
            "second_chance_kernel_tcpext", .counter,
            help: "TcpExt counters of the namespace whose listeners are watched.")
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out.sample("second_chance_kernel_tcpext", ["name": name], monitor.kernelCounter(index))
        }
    }

    /// One line per listener the responder has seen overflow (or serves), then the kernel counters.
    public static func text(_ monitor: ListenerMonitor) -> String {
        var out = "syn_cookies_mode: \(monitor.configuration.mode.rawValue)\n"
        for record in monitor.board.allRecords {
            out += "listener \(record.key) active \(record.isActive ? 1 : 0)"
            for counter in ListenerRecord.Counter.allCases { out += " \(counter.shortName) \(record.value(counter))" }
            out += "\n"
        }
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out += "kernel_\(name): \(monitor.kernelCounter(index))\n"
        }
        return out
    }
}
