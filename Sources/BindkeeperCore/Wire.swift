import Foundation

/// bindkeeper's control socket speaks two forms on one Unix stream socket, told apart by a
/// connection's first byte:
///
/// - **multibinder** (JSON-RPC 2.0, unframed): `{"jsonrpc":"2.0","method":"bind","id":..,
///   "params":[{"address":..,"port":..,"backlog":..}]}`, answered by `{"jsonrpc":"2.0","id":..,
///   "result":true}` with the socket in SCM_RIGHTS. Messages are split at the end of each top-level
///   JSON value, so requests that arrive together or in pieces are read as sent.
/// - **framed, version 1**: each message is a 4-byte big-endian length and that many bytes of JSON
///   (at most `Wire.maximumFrame`, so the first byte is always 0):
///   `{"v":1,"id":..,"method":"bind","binds":["tcp://[::]:443?backlog=4096", {...}]}` (up to
///   `Wire.maximumBatch` binds, all or none), `"method":"release"` with `"binds"` likewise (the
///   broker closes its sockets for them), `"method":"list"`, `"method":"reexec"`. Replies are
///   framed the same way: `{"v":1,"id":..,"result":{...}}` or `{"v":1,"id":..,"error":{"code":..,
///   "message":..}}`; a bind result lists one entry per socket, in the order of the fds.
public enum Wire: Sendable {
    case multibinder, framed

    public static let maximumMultibinderMessage = 65536
    public static let maximumFrame = 1 << 20
    /// SCM_RIGHTS carries at most 253 fds (SCM_MAX_FD) per message.
    public static let maximumBatch = 250
    public static let version = 1

    /// The length a frame's 4-byte big-endian header announces; nil until the 4 bytes are there.
    /// Both readers (the broker's and the client's) ask here.
    static func frameLength(_ bytes: ArraySlice<UInt8>) -> Int? {
        guard bytes.count >= 4 else { return nil }
        return bytes.prefix(4).reduce(0) { $0 << 8 | Int($1) }
    }

    static func frameHeader(_ length: Int) -> [UInt8] {
        [
            UInt8(truncatingIfNeeded: length >> 24), UInt8(truncatingIfNeeded: length >> 16),
            UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
        ]
    }
}
