//! Header rules a proxy must apply: which headers are hop-by-hop, and which
//! requests it cannot carry.

use ::http::{
    header::{
        AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, HOST, TE, TRANSFER_ENCODING, UPGRADE,
    },
    request::Parts,
    HeaderMap, HeaderName, HeaderValue, Method,
};

/// Always connection-specific (RFC 9110 §7.6.1; `Proxy-Connection` is the
/// pre-standard spelling some clients still send).
const HOP_BY_HOP: [HeaderName; 5] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers `Connection` cannot name for removal.
const PROTECTED: [HeaderName; 4] = [HOST, CONTENT_LENGTH, AUTHORIZATION, COOKIE];

/// Why `parts` cannot be proxied, when it cannot: it would turn the
/// connection into a tunnel the authorizer never sees into.
pub(super) fn unsupported(parts: &Parts) -> Option<&'static str> {
    if parts.method == Method::CONNECT {
        return Some("CONNECT is not supported\n");
    }
    // `h2c` alone may be ignored (RFC 9113 §3.1); the request is then plain HTTP/1.1.
    let h2c_only = parts
        .headers
        .get_all(UPGRADE)
        .iter()
        .all(|value| tokens(value).all(|t| t.eq_ignore_ascii_case(b"h2c")));
    (!h2c_only).then_some("protocol upgrades are not supported\n")
}

/// Removes hop-by-hop headers, including those the `Connection` header
/// names, and `TE` unless it asks for trailers (which gRPC needs end to end).
/// `Connection` may never remove end-to-end framing or routing headers:
/// `Connection: host` would otherwise hide the Host the policy judged.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(tokens)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| !PROTECTED.contains(n))
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        if name != TE {
            headers.remove(name);
        }
    }
    let trailers = headers.get_all(TE).iter().any(|value| {
        tokens(value).any(|t| {
            // A TE token may carry parameters: `trailers;q=1` is not valid but costs nothing.
            let name = t.split(|b| *b == b';').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    });
    headers.remove(TE);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether the message's `Connection` header says `close`.
pub(super) fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(b"close")))
}

/// The non-empty comma-separated elements of a header value, trimmed. Works
/// on bytes, so a value with obs-text cannot hide the names it lists.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}
