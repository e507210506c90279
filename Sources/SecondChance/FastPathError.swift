import Glibc
import LinuxSys

/// Why the fast path could not do something, as the kernel said it: the stage, the errno, and for
/// a refused load the verifier's last lines. A missing privilege and a program this kernel refuses
/// are told apart wherever the error ends up (the start's warning, `run --check`, doctor).
public struct FastPathError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Stage: String, Sendable {
        case load, interface, attach, detach, maps, inspect, pin, testRun
    }

    public var stage: Stage
    /// What was being done, for the log.
    public var what: String
    public var code: Int32
    /// The verifier's last lines when it refused the program (the whole log can be megabytes).
    public var verifier: [String]

    init(_ stage: Stage, _ what: String, errno code: Int32, log: String = "") {
        (self.stage, self.what, self.code) = (stage, what, code)
        verifier = log.split(separator: "\n").suffix(3).map(String.init)
    }

    init(_ stage: Stage, _ error: SystemError) { self.init(stage, error.call, errno: error.errno) }

    /// `body`'s system errors as this stage's.
    static func at<T>(_ stage: Stage, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as SystemError { throw FastPathError(stage, error) }
    }

    public var description: String {
        "\(what): \(String(cString: strerror(code)))"
            + (verifier.isEmpty ? "" : "; verifier: " + verifier.joined(separator: " | "))
    }

    /// What an operator does about it, when the errno says.
    public var advice: String? {
        // The verifier refuses with EACCES too: its lines, not the errno, say it was the verifier.
        if stage == .load && !verifier.isEmpty {
            return "this kernel's verifier refuses the program: the README's \"Kernels\" lists those it loads on"
        }
        if code == EPERM || code == EACCES {
            return "the process lacks CAP_BPF and CAP_NET_ADMIN (run as root, or grant them)"
        }
        return nil
    }

    /// The description, with the advice when there is one.
    public var explained: String { description + (advice.map { " (\($0))" } ?? "") }
}
