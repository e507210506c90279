// libFuzzer target: bindkeeper's request reader over any byte stream, cut into reads of the sizes
// the input's first byte picks. The buffer must stay within one message and one read.

import BindkeeperCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequestReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let stream = UnsafeBufferPointer(start: data + 1, count: size - 1)
    let step = 1 + Int(data[0])
    var reader = RequestReader()
    var offset = 0
    while offset < stream.count {
        let end = min(stream.count, offset + step)
        reader.append(stream[offset..<end])
        offset = end
        while let next = reader.next() {
            if case .failure(_, true) = next { return 0 }
        }
        precondition(reader.bufferedBytes <= Wire.maximumFrame + 4 + step)
    }
    return 0
}
