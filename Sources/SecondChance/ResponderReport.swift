import Glibc

/// The responder's per-listener counters and the namespace's TcpExt cookie counters, for the stats server.
public enum ResponderReport {
    public static func prometheus(_ monitor: ListenerMonitor) -> String {
        var out = "# HELP second_chance_listener_syn_cookies_active 1 while the responder answers this listener's SYNs.\n"
        out += "# TYPE second_chance_listener_syn_cookies_active gauge\n"
        let records = monitor.board.allRecords
        for record in records { out += "second_chance_listener_syn_cookies_active{listener=\"\(record.key)\"} \(record.isActive ? 1 : 0)\n" }
        for counter in ListenerRecord.Counter.allCases {
            out += "# TYPE \(counter.metric) counter\n"
            for record in records { out += "\(counter.metric){listener=\"\(record.key)\"} \(record.value(counter))\n" }
        }
        out += "# HELP second_chance_kernel_tcpext TcpExt counters of the namespace whose listeners are watched.\n"
        out += "# TYPE second_chance_kernel_tcpext counter\n"
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() {
            out += "second_chance_kernel_tcpext{name=\"\(name)\"} \(monitor.kernelCounter(index))\n"
        }
        return out
    }

    /// One line per listener the responder has seen overflow (or serves), then the kernel counters.
    public static func text(_ monitor: ListenerMonitor) -> String {
        var out = "syn_cookies_mode: \(monitor.configuration.mode.rawValue)\n"
        for record in monitor.board.allRecords {
            out += "listener \(record.key) active \(record.isActive ? 1 : 0)"
            for counter in ListenerRecord.Counter.allCases { out += " \(counter.shortName) \(record.value(counter))" }
            out += "\n"
        }
        for (index, name) in ListenerMonitor.kernelCounters.enumerated() { out += "kernel_\(name): \(monitor.kernelCounter(index))\n" }
        return out
    }
}
