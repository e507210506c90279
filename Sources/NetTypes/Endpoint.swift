/// An address and a port, as operators and tools write them: `198.18.0.1:80`, `[2001:db8::1]:80`.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(_ address: IPAddress, _ port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `ADDRESS:PORT`, with an IPv6 address in brackets (a bare one is taken too: the port follows
    /// the last colon).
    public init?(_ text: some StringProtocol) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            return nil
        }
        var host = text[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard let address = IPAddress(host) else { return nil }
        self.init(address, port)
    }

    /// The IPv4 address, for the sockets that only take one.
    public var ipv4: IPv4Address? {
        if case .v4(let address) = address { return address }
        return nil
    }

    public var description: String {
        if case .v6 = address { return "[\(address)]:\(port)" }
        return "\(address):\(port)"
    }
}
