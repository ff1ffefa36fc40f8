//! The tunnel server's reading of a CONNECT stream: `:authority` (where
//! the stream goes) and `Forwarded` (which workload calls), as another
//! node, or anything that reaches the tunnel port, writes them. The input
//! is `authority \n forwarded`.
#![no_main]

use http::{header::FORWARDED, HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use nodeward_proxy::inbound::connect::{connect_destination, forwarded_for};

fuzz_target!(|data: &[u8]| {
    let (authority, forwarded) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    // h2 hands the tunnel server a CONNECT's `:authority` as the URI.
    if let Ok(authority) = http::uri::Authority::try_from(authority) {
        let uri = Uri::from(authority);
        if let Some(dst) = connect_destination(&uri) {
            // Only literal addresses: the destination prints as it parsed.
            assert_eq!(dst.to_string().parse(), Ok(dst));
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(value) = forwarded.and_then(|f| HeaderValue::from_bytes(f).ok()) {
        headers.insert(FORWARDED, value);
    }
    if let Ok(Some(ip)) = forwarded_for(&headers) {
        // Registry lookups key on canonical addresses.
        assert_eq!(ip.to_canonical(), ip);
    }
});
