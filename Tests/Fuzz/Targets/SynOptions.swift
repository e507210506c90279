// libFuzzer target: the SYN option parser over any TCP header and packet end.

import SecondChanceCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSynOptions(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data + 2, count: size - 2)
    // The first two bytes place the TCP header and the end, anywhere (out of range included).
    let offset = Int(data[0]) - 8, end = bytes.count - Int(data[1] & 0x3f)
    _ = SynOptions.parse(bytes, tcpOffset: offset, end: end)
    return 0
}
