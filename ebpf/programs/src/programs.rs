// The kernel boundary: raw context pointers and helpers need `unsafe`.
#![allow(unsafe_code)]

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, sk_msg_md, BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_sk_fullsock,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
    programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use nodeward_common::{
    inbound, stat, Addr, FlowKey, LpmAddr, OrigDst, RedirectConfig, AF_INET, AF_INET6,
    V4_MAPPED_WORD,
};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;
/// Verdict of a cgroup sock_addr program that lets the call proceed.
const ALLOW: i32 = 1;
/// sk_msg verdict (and `bpf_msg_redirect_hash`'s success value).
const SK_PASS: u32 = 1;

#[map(name = "NW_CONFIG")]
static NW_CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map(name = "NW_MESH_CIDRS")]
static NW_MESH_CIDRS: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "NW_BY_COOKIE")]
static NW_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "NW_FLOWS")]
static NW_FLOWS: LruHashMap<FlowKey, OrigDst> = LruHashMap::with_max_entries(65536, 0);

/// Per-pod inbound mode (PeerAuthentication, or the node's default), keyed
/// by the pod's address (IPv4 as `::ffff:a.b.c.d`). Only enrolled pods have
/// an entry: an address without one is no meshed pod's, and is left alone.
#[map(name = "NW_INBOUND_MODES")]
static NW_INBOUND_MODES: HashMap<LpmAddr, u32> = HashMap::with_max_entries(8192, 0);

/// The sockmap fast path: both sockets of each pod ⇄ proxy connection, each
/// under the 4-tuple as it sees it (source = its own end).
#[map(name = "NW_SPLICE")]
static NW_SPLICE: SockHash<FlowKey> = SockHash::with_max_entries(65536, 0);

/// Spliced sockets that sent something on the normal path (their peer was
/// not in the sockhash yet, or any more). They stay on it: bytes redirected
/// later would be read before those still queued in TCP.
#[map(name = "NW_SPLICE_OFF")]
static NW_SPLICE_OFF: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// The cgroup id of every enrolled pod on this node (value 1). Containers
/// live in cgroups below their pod's; the program finds the pod by walking
/// the caller's ancestors, so container cgroups never enter a map.
#[map(name = "NW_PODS")]
static NW_PODS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

/// Deepest cgroup level searched for the pod (kubelet's pods sit at 3 or 4,
/// their containers one below).
const MAX_CGROUP_LEVEL: i32 = 16;

/// Direct connection attempts already counted: the last SYN's initial
/// sequence number per 4-tuple (as the pod sees it). A retransmitted SYN
/// repeats its sequence number, a new attempt on the same 4-tuple picks
/// another, so an attempt counts once however often its SYN is resent.
/// Only counting reads it: when it is full, the oldest entries go.
#[map(name = "NW_INBOUND_SEEN")]
static NW_INBOUND_SEEN: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "NW_STATS")]
static NW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// What `nw_netns_learn` works from and writes: index 0 holds the UDP port
/// the proxy is about to `connect()` to (written by the proxy), index 1 the
/// network namespace cookie of the socket that did.
#[map(name = "NW_NETNS_LEARN")]
static NW_NETNS_LEARN: Array<u64> = Array::with_max_entries(2, 0);

/// Learns the proxy's network namespace cookie on kernels without
/// `SO_NETNS_COOKIE` (before 5.14; the helper works from 5.7). Attached for
/// a moment to the proxy's own cgroup, never to pods'.
#[cgroup_sock_addr(connect4)]
pub fn nw_netns_learn(ctx: SockAddrContext) -> i32 {
    let _ = try_netns_learn(&ctx);
    ALLOW
}

#[inline(always)]
fn try_netns_learn(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (protocol, user_port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    let wanted = *NW_NETNS_LEARN.get(0).ok_or(())?;
    if protocol != IPPROTO_UDP || wanted == 0 || u64::from(u16::from_be(user_port as u16)) != wanted
    {
        return Ok(());
    }
    let slot = NW_NETNS_LEARN.get_ptr_mut(1).ok_or(())?;
    // SAFETY: sock_addr programs may call bpf_get_netns_cookie with their
    // context; `slot` points into the array's value, valid while we run.
    unsafe { *slot = bpf_get_netns_cookie(ctx.as_ptr()) };
    Ok(())
}

#[cgroup_sock_addr(connect4)]
pub fn nw_connect4(ctx: SockAddrContext) -> i32 {
    // A failure to redirect must never break the application's connect():
    // the proxy counts what was not redirected, the pod keeps working.
    let _ = try_connect(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nw_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect(&ctx, true);
    ALLOW
}

#[sock_ops]
pub fn nw_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    // 1 = "ok": a 0 would make the kernel discard the replies of other
    // sock_ops programs (e.g. a CNI's) attached for the same sockets.
    1
}

/// Puts the two sockets of the pod ⇄ proxy hop into [`NW_SPLICE`] once
/// they are established. Attached to the pod cgroup (the pod's connecting
/// socket) and to the proxy's own cgroup (its accepted socket).
#[sock_ops]
pub fn nw_splice_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_splice_ops(&ctx);
    1
}

/// Runs on every send of a socket in [`NW_SPLICE`]: the bytes go straight
/// into the peer socket's receive queue, skipping the TCP stack between
/// them. Without a peer they take the normal path.
#[sk_msg]
pub fn nw_splice_msg(ctx: SkMsgContext) -> u32 {
    try_splice_msg(&ctx)
}

/// Strict inbound: packets that would open a TCP connection to a pod (they
/// reach a listening socket) pass only when they come from the node proxy,
/// from loopback, or from the pod itself. Replies to the pod's own outgoing
/// connections and established traffic never meet a listener, so they pass.
#[cgroup_skb(ingress)]
pub fn nw_inbound(ctx: SkBuffContext) -> i32 {
    try_inbound(&ctx).unwrap_or(PASS)
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6: bool) -> Result<(), ()> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (protocol, user_port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let cfg = NW_CONFIG.get(0).ok_or(())?;
    if cfg.proxy_port == 0 {
        return Ok(());
    }
    // SAFETY: sock_addr programs may call bpf_get_netns_cookie with their context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.proxy_netns_cookie {
        bump(stat::SKIPPED_PROXY);
        return Ok(());
    }
    let dst = read_dst(sa, v6);
    let port = u16::from_be(user_port as u16);
    let mapped = is_v4_mapped(&dst);
    if !v6 || mapped {
        if dst[3] == cfg.proxy_addr4 && port == cfg.proxy_port {
            // A direct dial of the proxy stays unrecorded, so the proxy refuses it.
            return Ok(());
        }
    } else if cfg.has_addr6 == 0 || (dst == cfg.proxy_addr6 && port == cfg.proxy_port) {
        return Ok(());
    }
    if NW_MESH_CIDRS.get(Key::new(128, to_bytes(&dst))).is_none() {
        return Ok(());
    }
    let Some(pod) = enrolled_pod() else {
        bump(stat::SKIPPED_UNENROLLED);
        return Ok(());
    };
    record(ctx, dst, port, v6, pod)?;
    rewrite(sa, cfg, v6, mapped);
    bump(if v6 {
        stat::REDIRECTED6
    } else {
        stat::REDIRECTED4
    });
    if cfg.log != 0 {
        debug!(ctx, "redirected connection to port {}", port);
    }
    Ok(())
}

#[inline(always)]
fn read_dst(sa: *mut bpf_sock_addr, v6: bool) -> Addr {
    // SAFETY: valid context; user_ip4/user_ip6 are readable for connect4/6.
    // The verifier only allows 4-byte context loads at constant offsets, so
    // each word is read on its own (a plain array copy becomes a memcpy).
    unsafe {
        if v6 {
            let w = &raw const (*sa).user_ip6;
            [
                read_volatile(&raw const (*w)[0]),
                read_volatile(&raw const (*w)[1]),
                read_volatile(&raw const (*w)[2]),
                read_volatile(&raw const (*w)[3]),
            ]
        } else {
            [0, 0, V4_MAPPED_WORD, (*sa).user_ip4]
        }
    }
}

/// The cgroup id of the enrolled pod the calling process belongs to: its
/// own cgroup or the nearest ancestor in [`NW_PODS`], searched from the
/// root down (a pod is never below another pod).
#[inline(always)]
fn enrolled_pod() -> Option<u64> {
    for level in 1..=MAX_CGROUP_LEVEL {
        // SAFETY: helper without preconditions; 0 means "deeper than the
        // caller's own cgroup".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return None;
        }
        // SAFETY: a plain u32 read at once; userspace updates whole entries.
        if unsafe { NW_PODS.get(&id) }.is_some() {
            return Some(id);
        }
    }
    None
}

#[inline(always)]
fn record(ctx: &SockAddrContext, addr: Addr, port: u16, v6: bool, pod: u64) -> Result<(), ()> {
    let value = OrigDst {
        addr,
        port,
        family: if v6 { AF_INET6 } else { AF_INET },
        _pad: 0,
        cgroup_id: pod,
    };
    // SAFETY: sock_addr programs may call bpf_get_socket_cookie with their context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    NW_BY_COOKIE.insert(&cookie, &value, 0).map_err(|_| {
        bump(stat::RECORD_FAILED);
    })
}

/// `v6` must be a constant per program: connect4 may only write `user_ip4`,
/// connect6 only `user_ip6`, and the verifier checks each path.
#[inline(always)]
fn rewrite(sa: *mut bpf_sock_addr, cfg: &RedirectConfig, v6: bool, mapped: bool) {
    // SAFETY: user_ip4 (connect4) / user_ip6 (connect6) and user_port are writable.
    unsafe {
        if !v6 {
            (*sa).user_ip4 = cfg.proxy_addr4;
        } else if mapped {
            write_ip6(sa, [0, 0, V4_MAPPED_WORD, cfg.proxy_addr4]);
        } else {
            write_ip6(sa, cfg.proxy_addr6);
        }
        (*sa).user_port = u32::from(cfg.proxy_port.to_be());
    }
}

/// Writes `user_ip6` one word at a time (see [`read_dst`]).
#[inline(always)]
unsafe fn write_ip6(sa: *mut bpf_sock_addr, a: Addr) {
    // SAFETY: the caller passes a connect6 context, where user_ip6 is writable.
    unsafe {
        let w = &raw mut (*sa).user_ip6;
        write_volatile(&raw mut (*w)[0], a[0]);
        write_volatile(&raw mut (*w)[1], a[1]);
        write_volatile(&raw mut (*w)[2], a[2]);
        write_volatile(&raw mut (*w)[3], a[3]);
    }
}

fn try_inbound(ctx: &SkBuffContext) -> Result<i32, ()> {
    let cfg = NW_CONFIG.get(0).ok_or(())?;
    if cfg.inbound_mode == inbound::OFF || !to_tcp_listener(ctx) {
        return Ok(PASS);
    }
    let (src, dst, tcp_off) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => read_ip4(ctx)?,
        ETH_P_IPV6 => read_ip6(ctx)?,
        _ => return Ok(PASS),
    };
    if from_proxy_or_self(cfg, &src, &dst) {
        return Ok(PASS);
    }
    // Count connection attempts (a SYN without ACK, not retransmitted),
    // not packets; an unreadable header still gets the verdict, only the
    // count is skipped.
    let flags: u8 = ctx.load(tcp_off + 13).unwrap_or(0);
    let syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let counted = syn && new_attempt(ctx, &src, &dst, tcp_off);
    // SAFETY: the value is a plain u32 copied out at once; the map is only
    // updated whole-entry by userspace.
    let Some(mode) = (unsafe { NW_INBOUND_MODES.get(&to_bytes(&dst)) }).copied() else {
        // Not an enrolled pod: nodeward leaves it as it would be without.
        return Ok(PASS);
    };
    if mode != inbound::PERMISSIVE {
        if counted {
            bump(stat::INBOUND_DROPPED);
        }
        return Ok(DROP);
    }
    if counted {
        bump(stat::INBOUND_ALLOWED);
    }
    Ok(PASS)
}

/// Whether a SYN starts an attempt not counted yet (see [`NW_INBOUND_SEEN`]);
/// one whose ports or sequence number cannot be read counts.
#[inline(always)]
fn new_attempt(ctx: &SkBuffContext, src: &Addr, dst: &Addr, tcp_off: usize) -> bool {
    let (Ok(sport), Ok(dport), Ok(seq)) = (
        ctx.load::<u16>(tcp_off),
        ctx.load::<u16>(tcp_off + 2),
        ctx.load::<u32>(tcp_off + 4),
    ) else {
        return true;
    };
    let key = FlowKey {
        src_addr: *src,
        dst_addr: *dst,
        src_port: u16::from_be(sport),
        dst_port: u16::from_be(dport),
    };
    // SAFETY: the value is a plain u32 copied out at once.
    if unsafe { NW_INBOUND_SEEN.get(&key) }.copied() == Some(seq) {
        return false;
    }
    // A failed insert only means a retransmit may count again.
    let _ = NW_INBOUND_SEEN.insert(&key, &seq, 0);
    true
}

/// True when the packet is headed for a TCP socket in LISTEN state (a new
/// connection: the SYN, or the handshake's final ACK).
#[inline(always)]
fn to_tcp_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: `sk` is readable in cgroup_skb programs; the verifier makes us
    // null-check it and go through bpf_sk_fullsock before reading fields.
    unsafe {
        let sk: *mut bpf_sock = read_volatile(&raw const (*ctx.skb.skb).__bindgen_anon_2.sk);
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return false;
        }
        read_volatile(&raw const (*full).protocol) == IPPROTO_TCP
            && read_volatile(&raw const (*full).state) == TCP_LISTEN
    }
}

/// (source, destination, TCP header offset) of an IPv4 packet; cgroup_skb
/// data starts at the network header.
#[inline(always)]
fn read_ip4(ctx: &SkBuffContext) -> Result<(Addr, Addr, usize), ()> {
    let ihl: u8 = ctx.load(0).map_err(|_| ())?;
    let src: u32 = ctx.load(12).map_err(|_| ())?;
    let dst: u32 = ctx.load(16).map_err(|_| ())?;
    Ok((
        [0, 0, V4_MAPPED_WORD, src],
        [0, 0, V4_MAPPED_WORD, dst],
        usize::from(ihl & 0x0f) * 4,
    ))
}

/// Like [`read_ip4`]; the TCP offset assumes no extension headers (it is
/// only used for counting).
#[inline(always)]
fn read_ip6(ctx: &SkBuffContext) -> Result<(Addr, Addr, usize), ()> {
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        src[i] = ctx.load(8 + 4 * i).map_err(|_| ())?;
        dst[i] = ctx.load(24 + 4 * i).map_err(|_| ())?;
        i += 1;
    }
    Ok((src, dst, 40))
}

#[inline(always)]
fn from_proxy_or_self(cfg: &RedirectConfig, src: &Addr, dst: &Addr) -> bool {
    let loopback4 = is_v4_mapped(src) && src[3].to_ne_bytes()[0] == 127;
    let loopback6 = src[0] == 0 && src[1] == 0 && src[2] == 0 && src[3] == 1u32.to_be();
    let proxy4 = is_v4_mapped(src) && src[3] == cfg.proxy_addr4;
    let proxy6 = cfg.has_addr6 != 0 && *src == cfg.proxy_addr6;
    loopback4 || loopback6 || proxy4 || proxy6 || src == dst
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), ()> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_syn(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // Usually the proxy took the record already; count only real cleanups.
            if NW_FLOWS.remove(&flow_key(ctx)).is_ok() {
                bump(stat::FLOW_CLOSED);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn on_syn(ctx: &SockOpsContext) -> Result<(), ()> {
    // SAFETY: sock_ops programs may call bpf_get_socket_cookie with their context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; a concurrent delete can only
    // race with this socket's own close, which cannot happen during SYN.
    let value = unsafe { *NW_BY_COOKIE.get(&cookie).ok_or(())? };
    let _ = NW_BY_COOKIE.remove(&cookie);
    NW_FLOWS.insert(&flow_key(ctx), &value, 0).map_err(|_| {
        bump(stat::RECORD_FAILED);
    })?;
    bump(stat::FLOW_RECORDED);
    // Ask for state callbacks so the record goes away when the socket closes.
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(|_| ())
}

fn try_splice_ops(ctx: &SockOpsContext) -> Result<(), ()> {
    let cfg = NW_CONFIG.get(0).ok_or(())?;
    if cfg.proxy_port == 0 {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let key = flow_key(ctx);
            // The pod's end: connected to the proxy listener because
            // connect4 redirected it (its flow record is still there: the
            // proxy cannot accept before this socket's final ACK leaves).
            if key.dst_port != cfg.proxy_port || !is_proxy_addr(cfg, &key.dst_addr) {
                return Ok(());
            }
            // SAFETY: only checked for presence, nothing is read.
            if unsafe { NW_FLOWS.get(&key) }.is_none() {
                return Ok(());
            }
            splice(ctx, key)
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let key = flow_key(ctx);
            // The proxy's end: accepted on the outbound listener, in the
            // proxy's own network namespace.
            if key.src_port != cfg.proxy_port || !is_proxy_addr(cfg, &key.src_addr) {
                return Ok(());
            }
            // SAFETY: sock_ops programs may call bpf_get_netns_cookie with their context.
            if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.proxy_netns_cookie {
                return Ok(());
            }
            splice(ctx, key)
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // The sockhash entry goes with the socket (the kernel unlinks
            // it on close); the fallback mark is ours to remove.
            let _ = NW_SPLICE_OFF.remove(&flow_key(ctx));
            Ok(())
        }
        _ => Ok(()),
    }
}

#[inline(always)]
fn splice(ctx: &SockOpsContext, mut key: FlowKey) -> Result<(), ()> {
    // A reused 4-tuple must not inherit an old socket's fallback mark.
    let _ = NW_SPLICE_OFF.remove(&key);
    // SAFETY: the context pointer is the kernel's bpf_sock_ops for this call.
    NW_SPLICE
        .update(&mut key, unsafe { &mut *ctx.ops }, 0)
        .map_err(|_| ())?;
    bump(stat::SPLICED);
    // State callbacks, so the fallback mark (if any) goes at close.
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .map_err(|_| ())
}

fn try_splice_msg(ctx: &SkMsgContext) -> u32 {
    let own = msg_key(ctx.msg);
    // SAFETY: only checked for presence.
    if unsafe { NW_SPLICE_OFF.get(&own) }.is_some() {
        return SK_PASS;
    }
    let mut peer = FlowKey {
        src_addr: own.dst_addr,
        dst_addr: own.src_addr,
        src_port: own.dst_port,
        dst_port: own.src_port,
    };
    if NW_SPLICE.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        return SK_PASS;
    }
    // No peer (not spliced yet, or gone): this send goes through TCP, and
    // so must every later one, or it could overtake these bytes.
    if NW_SPLICE_OFF.insert(&own, &1, 0).is_ok() {
        bump(stat::SPLICE_FALLBACK);
    }
    SK_PASS
}

/// The connection as the sending socket sees it (source = its own end).
#[inline(always)]
fn msg_key(msg: *mut sk_msg_md) -> FlowKey {
    // SAFETY: the kernel hands every sk_msg program a valid context. Each
    // field is read with its own constant-offset 4-byte load, all of them
    // unconditionally: the verifier rejects context loads at an offset
    // chosen by a branch, which is what the compiler makes of a per-family
    // read.
    unsafe {
        let family = read_volatile(&raw const (*msg).family);
        let local_port = read_volatile(&raw const (*msg).local_port);
        let remote_port_raw = read_volatile(&raw const (*msg).remote_port);
        let local4 = read_volatile(&raw const (*msg).local_ip4);
        let remote4 = read_volatile(&raw const (*msg).remote_ip4);
        let (l, r) = (&raw const (*msg).local_ip6, &raw const (*msg).remote_ip6);
        let local6 = [
            read_volatile(&raw const (*l)[0]),
            read_volatile(&raw const (*l)[1]),
            read_volatile(&raw const (*l)[2]),
            read_volatile(&raw const (*l)[3]),
        ];
        let remote6 = [
            read_volatile(&raw const (*r)[0]),
            read_volatile(&raw const (*r)[1]),
            read_volatile(&raw const (*r)[2]),
            read_volatile(&raw const (*r)[3]),
        ];
        let (src_addr, dst_addr) = if family == u32::from(AF_INET6) {
            (local6, remote6)
        } else {
            (
                [0, 0, V4_MAPPED_WORD, local4],
                [0, 0, V4_MAPPED_WORD, remote4],
            )
        };
        FlowKey {
            src_addr,
            dst_addr,
            // Same byte-order convention as sock_ops (host / network-in-upper-half).
            src_port: local_port as u16,
            dst_port: remote_port(remote_port_raw),
        }
    }
}

/// True when `a` is the proxy's IPv4 (mapped) or IPv6 address.
#[inline(always)]
fn is_proxy_addr(cfg: &RedirectConfig, a: &Addr) -> bool {
    (is_v4_mapped(a) && a[3] == cfg.proxy_addr4) || (cfg.has_addr6 != 0 && *a == cfg.proxy_addr6)
}

fn flow_key(ctx: &SockOpsContext) -> FlowKey {
    let (src_addr, dst_addr) = if ctx.family() == AF_INET6 as u32 {
        let ops = ctx.ops;
        // SAFETY: sock_ops contexts are valid; the address words are
        // readable one 4-byte load at a time (see `read_dst`).
        unsafe {
            let (l, r) = (&raw const (*ops).local_ip6, &raw const (*ops).remote_ip6);
            (
                [
                    read_volatile(&raw const (*l)[0]),
                    read_volatile(&raw const (*l)[1]),
                    read_volatile(&raw const (*l)[2]),
                    read_volatile(&raw const (*l)[3]),
                ],
                [
                    read_volatile(&raw const (*r)[0]),
                    read_volatile(&raw const (*r)[1]),
                    read_volatile(&raw const (*r)[2]),
                    read_volatile(&raw const (*r)[3]),
                ],
            )
        }
    } else {
        (
            [0, 0, V4_MAPPED_WORD, ctx.local_ip4()],
            [0, 0, V4_MAPPED_WORD, ctx.remote_ip4()],
        )
    };
    FlowKey {
        src_addr,
        dst_addr,
        src_port: ctx.local_port() as u16,
        dst_port: remote_port(ctx.remote_port()),
    }
}

/// sock_ops exposes the remote port in network order; kernels since 4.19
/// put those 16 bits in the upper half of the word on little-endian hosts
/// (merbridge#100), older ones in the lower half.
fn remote_port(raw: u32) -> u16 {
    let be = if raw > 0xffff { raw >> 16 } else { raw };
    u16::from_be(be as u16)
}

fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_WORD
}

fn to_bytes(a: &Addr) -> LpmAddr {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = a[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

fn bump(index: u32) {
    if let Some(p) = NW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
