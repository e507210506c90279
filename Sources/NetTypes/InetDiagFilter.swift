/// A sock_diag (inet_diag) bytecode filter that keeps sockets whose local port is one of a set,
/// for INET_DIAG_REQ_BYTECODE: the kernel then sends only those, instead of every socket of the
/// states asked for.
///
/// The kernel runs ops of `struct inet_diag_bc_op` { u8 code; u8 yes; u16 no }, jumping `yes`
/// bytes on a match and `no` bytes otherwise, and keeps a socket that lands exactly on the end
/// (a jump past it, by 4, rejects). Its audit (`inet_diag_bc_audit`) walks the `yes` jumps and
/// wants each at least the op's size, and every `no` target on that walk. So each port is a
/// port test (S_EQ, 8 bytes: the op, then the port in the second op's `no`) and an unconditional
/// jump to the end (JMP, 4 bytes, taken through its `no`): `yes` (8) steps to the jump, `no` (12)
/// to the next port's test, or past the end after the last. `yes` is a byte, `no` 16 bits: the
/// 12-byte steps reach 5461 ports.
public enum InetDiagFilter {
    /// linux/inet_diag.h's INET_DIAG_BC_JMP and INET_DIAG_BC_S_EQ.
    static let jump: UInt8 = 1, sourcePortEquals: UInt8 = 11
    public static let maximumPorts = Int(UInt16.max) / 12

    /// The bytecode, in host byte order as netlink carries it; nil for no ports (nothing would
    /// match) or more than `maximumPorts`.
    public static func localPort(in ports: some Collection<UInt16>) -> [UInt8]? {
        let ports = Set(ports).sorted()
        guard !ports.isEmpty, ports.count <= maximumPorts else { return nil }
        let length = 12 * ports.count
        var code: [UInt8] = []
        code.reserveCapacity(length)
        func op(_ operation: UInt8, yes: UInt8, no: Int) {
            code.append(operation)
            code.append(yes)
            withUnsafeBytes(of: UInt16(no)) { code.append(contentsOf: $0) }
        }
        for (index, port) in ports.enumerated() {
            let offset = 12 * index
            op(sourcePortEquals, yes: 8, no: index == ports.count - 1 ? 16 : 12)
            op(0, yes: 0, no: Int(port))  // the operand: the port, in `no`
            op(jump, yes: 4, no: length - (offset + 8))
        }
        return code
    }

    /// What the kernel does with `code` for a socket on `port` (inet_diag_bc_run, for S_EQ and
    /// JMP): whether it is kept. For tests of the layout.
    public static func keeps(_ code: [UInt8], port: UInt16) -> Bool {
        var offset = 0
        while offset < code.count {
            guard offset + 4 <= code.count else { return false }
            let yes = Int(code[offset + 1]), no = Int(UInt16(code[offset + 2]) | UInt16(code[offset + 3]) << 8)
            var matched: Bool
            switch code[offset] {
            case jump: matched = false
            case sourcePortEquals:
                guard offset + 8 <= code.count else { return false }
                matched = port == UInt16(code[offset + 6]) | UInt16(code[offset + 7]) << 8
            default: return false
            }
            offset += matched ? yes : no
        }
        return offset == code.count
    }
}
