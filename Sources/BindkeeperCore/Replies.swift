/// What the framed form's replies carry in `result`, written by the broker and read by clients.
public enum Reply {
    /// A bind's result: one entry per socket, in the order of the fds that come with it.
    public struct Bind: Codable, Equatable, Sendable {
        public struct Socket: Codable, Equatable, Sendable {
            public var key: String
            public var url: String
            public var backlog: BacklogReport?
            public var warning: String?

            public init(key: String, url: String, backlog: BacklogReport? = nil, warning: String? = nil) {
                (self.key, self.url, self.backlog, self.warning) = (key, url, backlog, warning)
            }
        }

        public var sockets: [Socket]

        public init(sockets: [Socket]) { self.sockets = sockets }
    }

    /// `list`: the broker's sockets, with their queues as the kernel reports them.
    public struct Listing: Codable, Equatable, Sendable {
        public struct Socket: Codable, Equatable, Sendable {
            public var key: String
            public var url: String
            public var fd: Int32
            public var handedOut: UInt64
            /// SO_COOKIE: the same number for the same kernel socket, whoever holds it.
            public var cookie: UInt64
            public var backlog: BacklogReport?
            public var acceptQueue: UInt32?
            public var synQueue: UInt32?
            public var kernelBacklog: UInt32?
            /// SYNs and handshakes the kernel dropped at this socket since it was made.
            public var listenDrops: UInt32?

            enum CodingKeys: String, CodingKey {
                case key, url, fd, cookie, backlog
                case handedOut = "handed_out", acceptQueue = "accept_queue", synQueue = "syn_queue", kernelBacklog =
                    "kernel_backlog", listenDrops = "listen_drops"
            }

            public init(key: String, url: String, fd: Int32, handedOut: UInt64, cookie: UInt64, backlog: BacklogReport?)
            {
                (self.key, self.url, self.fd, self.handedOut, self.cookie, self.backlog) = (
                    key, url, fd, handedOut, cookie, backlog
                )
            }
        }

        public var pid: Int32
        public var control: String
        public var sockets: [Socket]
        public var clientsConnected: Int
        public var clientsServed: Int
        /// Who holds the TCP sockets, and their established connections through them
        /// (`Holdings`); nil when the broker could not count, and `holdersUnknown` says why.
        public var holders: [Holdings.Holder]?
        /// Established connections through the sockets that no process seen holding them has,
        /// and the processes whose descriptors the broker could not read (they may be theirs).
        public var unattributedConnections: UInt32?
        public var unreadableProcesses: Int?
        public var holdersUnknown: String?
        /// Holders beyond the most one listing names (`holders` is the first of them by socket and pid).
        public var holdersLeftOut: Int?
        /// How long ago the holders were counted (a `list` asks for the next count), in seconds,
        /// and how long that count took, in milliseconds.
        public var holdersAgeSeconds: UInt64?
        public var holdersCountMilliseconds: UInt64?

        enum CodingKeys: String, CodingKey {
            case pid, control, sockets, holders
            case clientsConnected = "clients_connected", clientsServed = "clients_served"
            case unattributedConnections = "unattributed_connections", unreadableProcesses = "unreadable_processes"
            case holdersUnknown = "holders_unknown", holdersAgeSeconds = "holders_age_seconds"
            case holdersCountMilliseconds = "holders_count_milliseconds", holdersLeftOut = "holders_left_out"
        }

        public init(pid: Int32, control: String, sockets: [Socket], clientsConnected: Int, clientsServed: Int) {
            (self.pid, self.control, self.sockets) = (pid, control, sockets)
            (self.clientsConnected, self.clientsServed) = (clientsConnected, clientsServed)
        }
    }

    /// `release`: the keys of the sockets the broker let go of.
    public struct Release: Codable, Equatable, Sendable {
        public var released: [String]

        public init(released: [String]) { self.released = released }
    }

    /// `steer`: the keys of the members now steered, served generation first.
    public struct Steer: Codable, Equatable, Sendable {
        public var steered: [String]

        public init(steered: [String]) { self.steered = steered }
    }

    /// `reexec`: the broker that will re-execute, and the image it checked.
    public struct Reexec: Codable, Equatable, Sendable {
        public var pid: Int32
        public var image: String

        public init(pid: Int32, image: String) { (self.pid, self.image) = (pid, image) }
    }
}
