//! The tunnel between node proxies: HTTP/2 CONNECT over mutual TLS 1.3
//! (HBONE-style), one stream per meshed connection.
//!
//! [`pool`] is the client side: streams are multiplexed over pooled TLS
//! connections keyed by (source identity, destination identity, destination
//! node), so a burst of connections pays few handshakes. Each stream goes to
//! the key's least-loaded connection; past [`SPREAD_STREAMS`] a new one is
//! opened (up to [`MAX_CONNECTIONS_PER_KEY`]) so bulk streams between one
//! pair of identities are encrypted on several cores. [`crate::inbound`] is
//! the receiving side on the tunnel port (default 15008). The wire format is
//! documented in `docs/identity.md` ("Tunnel protocol").

use std::time::Duration;

pub mod pool;
mod stream;

pub use pool::{Pool, Target, TunnelError};
pub use stream::Stream;

/// HTTP/2 stream window: big enough that one stream fills a fast link.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window, shared by the streams of a connection.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept (fewer frames per bulk transfer).
pub const MAX_FRAME: u32 = 256 * 1024;
/// Most bytes of a caller's first read sent with its CONNECT, before the
/// destination proxy answers (optimistic CONNECT; see `pool::Early`).
pub const EARLY_DATA: usize = 16 * 1024;
/// Bytes one stream may queue in HTTP/2 beyond what the peer's windows let
/// out; the relay's writes wait past it (hyper's default).
pub const SEND_BUFFER: usize = 1024 * 1024;
/// Most streams on one pooled connection; past this another connection is
/// opened even beyond [`MAX_CONNECTIONS_PER_KEY`] (the pool never refuses).
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Active streams on a key's least-loaded connection before the pool opens
/// another one. A connection's TLS encryption and HTTP/2 framing run on one
/// task behind one lock, so streams sharing it share one core: several bulk
/// streams on one connection move less than one stream alone.
pub const SPREAD_STREAMS: usize = 4;
/// Connections per key opened to spread streams; beyond this, streams pack
/// onto the least-loaded one. Bounds handshakes and the state each peer's
/// server keeps for us.
pub const MAX_CONNECTIONS_PER_KEY: usize = 4;
/// Concurrent streams a server accepts on one connection: room above
/// [`MAX_STREAMS_PER_CONNECTION`] (and ztunnel's 100) for streams still
/// closing, while a client that ignores that bound sets up at most this
/// many streams (each an authorization and a dial) at once per connection.
pub const SERVER_MAX_STREAMS: u32 = 256;
/// TCP connect and TLS handshake deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections idle this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 PING interval: finds dead peers on idle pooled connections, and
/// (server side) peers that stopped reading.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Response header naming why a CONNECT failed (non-2xx only).
pub const ERROR_HEADER: &str = "nodeward-error";

/// PINGs the peer every [`KEEPALIVE`], idle or not, and returns when one
/// goes unanswered for [`KEEPALIVE_TIMEOUT`]: a dead peer's connection is
/// closed instead of holding streams (or, client side, taking new ones)
/// that would never be answered. Never returns without a `PingPong` (it was
/// taken already).
pub(crate) async fn keepalive(ping: Option<h2::PingPong>) -> &'static str {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return "ping failed",
            Err(_) => return "keepalive timed out",
        }
    }
}
