//! Types shared by nodeward's kernel programs and its userspace proxy.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields: the BPF
//! verifier rejects map updates that read uninitialised stack bytes, and
//! userspace must agree with the kernel on every byte of a key.
#![no_std]

/// Address words are stored as IPv6, with IPv4 as `::ffff:a.b.c.d`, all in
/// network byte order, so one key type and one LPM trie serve both families.
pub type Addr = [u32; 4];

/// The second word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), in network order.
pub const V4_MAPPED_WORD: u32 = 0x0000_ffffu32.to_be();

/// Socket family values recorded in [`OrigDst::family`].
pub const AF_INET: u16 = 2;
/// Socket family value for IPv6.
pub const AF_INET6: u16 = 10;

/// Key of [`FLOWS`](self): a redirected connection's 4-tuple as the pod's
/// socket sees it (source = pod, destination = node proxy).
///
/// The sockhash of the fast path ([`maps::SPLICE`]) uses the same type, as
/// *each* socket sees its connection (source = local end): a socket finds
/// its peer under the swapped key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: Addr,
    pub dst_addr: Addr,
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
}

/// What the kernel recorded about a redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// The destination the pod asked for.
    pub addr: Addr,
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]: the family of the connecting socket.
    pub family: u16,
    pub _pad: u32,
    /// cgroup v2 id of the task that called `connect()`.
    pub cgroup_id: u64,
}

/// Redirection settings, written by the proxy into index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Node proxy IPv4 address (network order), used for IPv4 and v4-mapped destinations.
    pub proxy_addr4: u32,
    /// Outbound capture port, host order; 0 disables redirection.
    pub proxy_port: u16,
    /// 1 when [`Self::proxy_addr6`] is set.
    pub has_addr6: u8,
    /// 1 to emit aya-log records (debug builds of the proxy read them).
    pub log: u8,
    /// Node proxy IPv6 address (network order words).
    pub proxy_addr6: Addr,
    /// Network namespace cookie of the proxy: sockets there are never redirected.
    pub proxy_netns_cookie: u64,
    /// What `nw_inbound` does with new connections that reach a pod without
    /// coming from its node proxy: one of [`inbound`]'s values.
    pub inbound_mode: u32,
    pub _pad: u32,
}

/// Values of [`RedirectConfig::inbound_mode`].
pub mod inbound {
    /// No inbound check (the program lets everything through).
    pub const OFF: u32 = 0;
    /// Let direct connections in, but count them (`PERMISSIVE`).
    pub const PERMISSIVE: u32 = 1;
    /// Drop them (`STRICT`): pods are reachable only through their node proxy.
    pub const STRICT: u32 = 2;
}

/// LPM trie data: an address as 16 bytes in network order (IPv4 mapped).
pub type LpmAddr = [u8; 16];

/// Indexes of the per-CPU statistics array.
pub mod stat {
    /// IPv4 connections redirected to the proxy.
    pub const REDIRECTED4: u32 = 0;
    /// IPv6 (including v4-mapped) connections redirected to the proxy.
    pub const REDIRECTED6: u32 = 1;
    /// Connections from the proxy's own network namespace, left alone.
    pub const SKIPPED_PROXY: u32 = 2;
    /// Redirect records that could not be stored (map full or error).
    pub const RECORD_FAILED: u32 = 3;
    /// Records moved from the cookie map to the flow map at SYN time.
    pub const FLOW_RECORDED: u32 = 4;
    /// Flow records the kernel removed because the pod's socket closed
    /// before the proxy read them.
    pub const FLOW_CLOSED: u32 = 5;
    /// Direct (not from the node proxy) connection attempts dropped under
    /// STRICT: once per attempt, however often its SYN is retransmitted.
    pub const INBOUND_DROPPED: u32 = 6;
    /// Direct connection attempts let in under PERMISSIVE (counted the same way).
    pub const INBOUND_ALLOWED: u32 = 7;
    /// Sockets of the pod ⇄ proxy hop put into the sockhash (fast path);
    /// both ends of a spliced connection count.
    pub const SPLICED: u32 = 8;
    /// Sockets whose sends took the normal TCP path because their peer was
    /// not in the sockhash (not spliced, or already closed); they stay on it.
    pub const SPLICE_FALLBACK: u32 = 9;
    /// Mesh-bound connections from a cgroup below no enrolled pod's, left
    /// alone (the pod is not in the mesh).
    pub const SKIPPED_UNENROLLED: u32 = 10;
    /// Number of statistics slots.
    pub const COUNT: u32 = 11;
}

/// Map names, shared so userspace looks up exactly what the programs define.
pub mod maps {
    /// `Array<RedirectConfig>` with one entry.
    pub const CONFIG: &str = "NW_CONFIG";
    /// `LpmTrie<LpmAddr, u8>`: destinations that are meshed.
    pub const MESH_CIDRS: &str = "NW_MESH_CIDRS";
    /// `LruHashMap<u64 socket cookie, OrigDst>`: written at connect, moved at SYN.
    pub const BY_COOKIE: &str = "NW_BY_COOKIE";
    /// `LruHashMap<FlowKey, OrigDst>`: read (and removed) by the proxy on accept.
    pub const FLOWS: &str = "NW_FLOWS";
    /// `PerCpuArray<u64>` of [`super::stat`] counters.
    pub const STATS: &str = "NW_STATS";
    /// Per-pod inbound mode overrides (PeerAuthentication).
    pub const INBOUND_MODES: &str = "NW_INBOUND_MODES";
    /// `HashMap<u64, u32>`: cgroup id of each enrolled pod on the node → 1.
    /// A connection is the pod's when it comes from that cgroup or any
    /// cgroup below it (its containers).
    pub const PODS: &str = "NW_PODS";
    /// `SockHash<FlowKey>`: both sockets of each pod ⇄ proxy connection,
    /// keyed by their own view of the 4-tuple (the sockmap fast path).
    pub const SPLICE: &str = "NW_SPLICE";
    /// `LruHashMap<FlowKey, u8>`: spliced sockets that sent on the normal
    /// path once, so they never overtake those bytes through the sockhash.
    pub const SPLICE_OFF: &str = "NW_SPLICE_OFF";
    /// `Array<u64>` of 2: the port `nw_netns_learn` watches (index 0) and
    /// the network namespace cookie it saw (index 1).
    pub const NETNS_LEARN: &str = "NW_NETNS_LEARN";
}

/// Program names as they appear in the object file.
pub mod programs {
    pub const CONNECT4: &str = "nw_connect4";
    pub const CONNECT6: &str = "nw_connect6";
    pub const SOCK_OPS: &str = "nw_sockops";
    pub const INBOUND: &str = "nw_inbound";
    /// sock_ops program that puts the pod ⇄ proxy hop's sockets into the
    /// sockhash; attached to the pod cgroup and to the proxy's own cgroup.
    pub const SPLICE_OPS: &str = "nw_splice_ops";
    /// sk_msg program on the sockhash: hands each send to the peer socket.
    pub const SPLICE_MSG: &str = "nw_splice_msg";
    /// connect4 program that learns the proxy's network namespace cookie on
    /// kernels without `SO_NETNS_COOKIE`; attached only for that moment.
    pub const NETNS_LEARN: &str = "nw_netns_learn";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are `#[repr(C)]`, `Copy`, made only of integers, and
    // have explicit padding fields, so every byte pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: see above.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: see above.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::RedirectConfig {}
}
