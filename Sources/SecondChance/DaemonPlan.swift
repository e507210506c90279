import NetTypes
import SecondChanceCore

/// --decap: a mode, or `auto` to pick one from the host's fou.
public enum DecapsulationChoice: String, Sendable, CaseIterable {
    case auto, userspace, kernel
}

/// --forward: a mode, or `auto` to take the kernel's forwarding where the host allows it.
public enum ForwardingChoice: String, Sendable, CaseIterable {
    case auto, raw, kernel
}

/// The flags that choose a daemon's modes, as `run` takes them and `doctor` takes them again.
public struct DaemonOptions: Sendable, Equatable {
    public var decap: DecapsulationChoice = .auto
    public var forward: ForwardingChoice = .auto
    public var synCookies: ResponderMode = .auto
    /// Off with --no-cookie-check: no cookie ACK is recognised, and no SYN answered.
    public var checkCookies = true
    public var guePort: UInt16 = GUEPacket.port
    /// --allow-source; nil for a doctor not told the peers.
    public var allowSources: [IPv4Prefix]?
    public var fastPath: FastPathChoice = .auto
    /// --fou-mark: what doctor checks the health-probe rule against.
    public var fouMark: PacketMark = .default
    public var fastPathInterfaces: [String] = []
    /// The forwarding mode of the process that re-executed into this one: kept, while the host
    /// still allows it, so that a re-exec does not dump the firewall while the queues wait.
    public var keptForwarding: ForwardingMode?

    public init() {}
}

/// A start that these flags refuse on this host, and why.
public struct PlanRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
}

/// The modes a daemon runs in, chosen once from its flags and the host (`run` and `doctor` alike:
/// doctor says what a start would do because it asks the same function).
public struct DaemonPlan: Sendable, Equatable {
    public var decapsulation: DecapsulationMode
    public var decapsulationReason: String
    public var forwarding: ForwardingMode
    public var forwardingReason: String
    /// The responder as it runs: off when the flags say so, or when neither the queue's cookie
    /// helpers load nor the tc program may answer.
    public var responder: ResponderMode
    /// Set when only the tc program answers (the queue's cookie helpers do not load): why.
    public var responderNote: String?
    /// Where GUE from the peers arrives; where the tc program goes without --fast-path-interface.
    public var peerInterfaces: [String]

    /// The parts of the host these flags make a start read: the firewall only for `--forward
    /// auto` with nothing kept, fou only for `--decap auto`.
    public static func parts(for options: DaemonOptions) -> HostSnapshot.Parts {
        var parts: HostSnapshot.Parts = []
        if options.forward != .raw { parts.insert(.forwarding) }
        if options.forward == .auto && options.keptForwarding == nil { parts.insert(.rules) }
        if options.decap == .auto { parts.insert(.fou) }
        if options.checkCookies && options.synCookies != .off { parts.insert(.cookieHelpers) }
        return parts
    }

    public static func make(_ options: DaemonOptions, host: HostSnapshot) throws(PlanRefusal) -> DaemonPlan {
        let (responder, note) = try responderMode(options, host: host)
        let peers = host.peerInterfaces ?? []
        // The flags, not whether the helpers loaded this time: a choice a re-exec keeps must hold
        // for an image whose responder does come on.
        let (forwarding, why) = try forwardingMode(
            options, host: host, responder: options.checkCookies && options.synCookies != .off)
        let (decapsulation, because) = decapsulationMode(options, host: host)
        return DaemonPlan(
            decapsulation: decapsulation, decapsulationReason: because, forwarding: forwarding,
            forwardingReason: why, responder: responder, responderNote: note, peerInterfaces: peers)
    }

    /// The responder's mode, and a note when the tc program alone answers. The queue's responder
    /// and cookie-ACK check need the raw cookie helpers (Linux 6.0); the tc program's ask the
    /// listener itself (bpf_tcp_gen_syncookie, 5.3), so without the helpers it still answers.
    static func responderMode(_ options: DaemonOptions, host: HostSnapshot) throws(PlanRefusal) -> (
        ResponderMode, String?
    ) {
        if !options.checkCookies && options.synCookies == .always {
            throw PlanRefusal(
                description: "--syn-cookies always answers with cookies --no-cookie-check would not accept")
        }
        guard options.checkCookies, options.synCookies != .off else { return (.off, nil) }
        guard case .failure(let failure) = host.cookieHelpers else { return (options.synCookies, nil) }
        // `always` promises every SYN an answer: only a fast path that must load can keep that.
        if options.fastPath.mustLoad || (options.fastPath == .auto && options.synCookies == .auto) {
            return (options.synCookies, "the tc program's only; the queue's SYNs go to the kernel: \(failure)")
        }
        guard options.synCookies == .auto else {
            throw PlanRefusal(
                description: "--syn-cookies always needs the BPF cookie programs or --fast-path tc (or xdp): \(failure)"
            )
        }
        return (.off, nil)
    }

    static func decapsulationMode(_ options: DaemonOptions, host: HostSnapshot) -> (DecapsulationMode, String) {
        switch options.decap {
        case .kernel: return (.kernel, "--decap kernel")
        case .userspace: return (.userspace, "--decap userspace")
        case .auto:
            let fou = (try? host.fou.get()) ?? .unavailable
            return (fou == .gue ? .kernel : .userspace, "\(fou)")
        }
    }

    static func forwardingMode(
        _ options: DaemonOptions, host: HostSnapshot, responder: Bool
    ) throws(PlanRefusal) -> (ForwardingMode, String) {
        // accept_local counts where GUE arrives; unknown peers leave any interface counting.
        let interfaces = host.peerInterfaces
        switch options.forward {
        case .raw:
            return (.raw, "--forward raw")
        case .kernel:
            let problems = HostChecks.kernelForwarding(host, interfaces: interfaces).filter { $0.level == .fail }
            guard problems.isEmpty else {
                throw PlanRefusal(description: "--forward kernel: " + problems.map(\.line).joined(separator: "\n"))
            }
            return (.kernel, "--forward kernel")
        case .auto:
            if let kept = options.keptForwarding,
                kept == .raw
                    || HostChecks.kernelForwarding(host, interfaces: interfaces).allSatisfy({
                        $0.level != .fail && $0.level != .warn
                    })
            {
                return (kept, "as chosen before the re-exec")
            }
            return HostChecks.automaticForwarding(host, interfaces: interfaces, responder: responder)
        }
    }

    /// What doctor prints of the plan, and a start logs.
    public var lines: [String] {
        [
            "decapsulation: \(decapsulation.rawValue) (\(decapsulationReason))",
            "forwarding: \(forwarding.rawValue) (\(forwardingReason))",
            "SYN-cookie responder: \(responder.rawValue)" + (responderNote.map { " (\($0))" } ?? ""),
        ]
    }
}
