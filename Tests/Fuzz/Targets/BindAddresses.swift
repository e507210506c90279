// libFuzzer target: bind URLs, policy patterns and policy files. Whatever parses must come back
// unchanged through every other form it travels in.

@testable import BindkeeperCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBindAddresses(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let text = String(decoding: bytes, as: UTF8.self)
    if case .success(let request) = BindRequest.parse(url: text) {
        precondition(
            (try? BindRequest.parse(url: request.url).get()) == request, "URL round trip: \(text.debugDescription)")
        precondition(
            (try? Wire.bindRequest(json: Wire.jsonParams(request)).get()) == request,
            "JSON round trip: \(text.debugDescription)")
        precondition(
            FDStoreName.encode(request).flatMap(FDStoreName.decode) == request,
            "fd store round trip: \(text.debugDescription)")
        let state = BrokerState(
            control: 3, sockets: [.init(fd: 4, request: request, handedOut: 1, creator: 7)], clients: [])
        precondition(
            (try? BrokerState.decode(state.encoded()).get()) == state, "state round trip: \(text.debugDescription)")
    }
    if case .success(let pattern) = BindPattern.parse(text),
        let request = try? BindRequest.parse(url: "unix:/run/web/a.sock").get()
    {
        _ = pattern.matches(request)
    }
    _ = Policy.parse(
        bytes, brokerUID: 0, resolveUser: { $0 == "www" ? 33 : nil }, resolveGroup: { $0 == "www" ? 33 : nil })
    _ = ConfigTemplate.parse(text)
    return 0
}
