//! The two fields of a CONNECT stream that the calling node writes and the
//! tunnel server reads, parsed without I/O so they can be unit-tested and
//! fuzzed (`fuzz/fuzz_targets/tunnel_connect.rs`): `:authority`, the
//! destination, and `Forwarded`, the calling workload.

use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, Uri};

/// A `Forwarded` header that names no client address nodeward can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Forwarded header")]
pub struct BadForwarded;

/// The stream's destination from `:authority`: only a literal `ip:port`
/// (`[v6]:port` for IPv6), never a name, so nothing is resolved.
pub fn connect_destination(uri: &Uri) -> Option<SocketAddr> {
    uri.authority().and_then(|a| a.as_str().parse().ok())
}

/// The calling workload from `Forwarded: for=1.2.3.4` or
/// `for="[fd00::1]"` (RFC 7239, first element), IPv4-mapped IPv6 written
/// as IPv4. `None` without the header; an error when it is there but names
/// no address.
pub fn forwarded_for(headers: &HeaderMap) -> Result<Option<IpAddr>, BadForwarded> {
    let Some(value) = headers.get(hyper::header::FORWARDED) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| BadForwarded)?;
    let first = text.split(',').next().unwrap_or("");
    let node = first
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("for"))
        .map(|(_, v)| {
            v.trim_matches('"')
                .trim_start_matches('[')
                .trim_end_matches(']')
        })
        .ok_or(BadForwarded)?;
    node.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|_| BadForwarded)
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderValue, FORWARDED};

    use super::*;

    fn forwarded(value: &[u8]) -> Result<Option<IpAddr>, BadForwarded> {
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED, HeaderValue::from_bytes(value).expect("value"));
        forwarded_for(&headers)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_destination_is_a_literal_socket_address_or_nothing() {
        let uri = |s: &str| Uri::try_from(s).expect("uri");
        assert_eq!(
            connect_destination(&uri("10.0.0.5:8080")),
            Some("10.0.0.5:8080".parse().expect("addr"))
        );
        assert_eq!(
            connect_destination(&uri("[fd00::5]:80")),
            Some("[fd00::5]:80".parse().expect("addr"))
        );
        for refused in ["backend:80", "10.0.0.5", "user@10.0.0.5:80", "/path"] {
            assert_eq!(connect_destination(&uri(refused)), None, "{refused}");
        }
    }

    #[test]
    fn forwarded_names_the_first_elements_client_address() {
        assert_eq!(forwarded_for(&HeaderMap::new()), Ok(None));
        assert_eq!(forwarded(b"for=10.0.0.1"), Ok(Some(ip("10.0.0.1"))));
        assert_eq!(
            forwarded(b"proto=https; FOR=\"[fd00::1]\", for=10.9.9.9"),
            Ok(Some(ip("fd00::1")))
        );
        assert_eq!(
            forwarded(b"for=\"[::ffff:10.0.0.1]\""),
            Ok(Some(ip("10.0.0.1")))
        );
    }

    #[test]
    fn a_forwarded_header_without_a_readable_address_is_refused() {
        for bad in [
            &b""[..],
            b"by=10.0.0.1",
            b"for=backend",
            b"for=_hidden",
            b"for=\"10.0.0.1:8080\"",
            b"for=unknown",
            b"for=10.0.0.1\xff",
        ] {
            assert_eq!(forwarded(bad), Err(BadForwarded), "{bad:?}");
        }
    }
}
