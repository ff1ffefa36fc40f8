//! Request hosts in one canonical spelling, so a `hosts` rule and the
//! application behind it agree on which host a request names.
//!
//! The proxy normalises the `Host` (or `:authority`) once, matches policy
//! against the result and forwards the *same* result. A spelling the
//! application might read differently from the policy is refused instead:
//! `admin.example..` (one trailing dot is the root, two are an empty
//! label), `[admin.example]` (brackets hold IPv6 addresses only),
//! `b,admin.example` (a list to some servers), `127.1` (an IPv4 address to
//! some parsers, a name to others).
//!
//! Normal form: `name[:port]` or `[ipv6][:port]`, where
//! - a name is lowercase ASCII, without its one trailing dot; it is made of
//!   1 to 63 letters, digits, `-` or `_` per dot-separated label, at most
//!   253 bytes in all; a name whose last label is a number (`10.0.0.1`,
//!   `0x7f`) must be a dotted-quad IPv4 address;
//! - an IPv6 literal is bracketed, without a zone, in its RFC 5952 form
//!   (`[FD00:0::1]` is `[fd00::1]`);
//! - a port is 1 to 65535 without leading zeros (`:080` is `:80`); an empty
//!   port (`host:`) is dropped.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

/// Longest name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// A request host in normal form (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedHost {
    /// A lowercase name, a dotted-quad IPv4 address or a bracketed IPv6
    /// address.
    pub name: String,
    /// The port the host names, if it names one.
    pub port: Option<u16>,
}

/// Why a host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostRejected {
    #[error("host is empty")]
    Empty,
    #[error("host port is not a number between 1 and 65535")]
    BadPort,
    #[error("host in brackets is not an IPv6 address")]
    BadIpv6,
    #[error("host contains a character other than letters, digits, '-', '_' and '.'")]
    BadCharacter,
    #[error("host has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("host name or one of its labels is too long")]
    TooLong,
    #[error("host ends in a number but is not a dotted-quad IPv4 address")]
    BadIpv4,
}

/// Normalises `raw`, a `Host` header value or an `:authority` without
/// userinfo.
pub fn normalize_host(raw: &str) -> Result<NormalizedHost, HostRejected> {
    if raw.is_empty() {
        return Err(HostRejected::Empty);
    }
    let (name, port) = split(raw)?;
    let port = parse_port(port)?;
    let name = match name.strip_prefix('[') {
        Some(bracketed) => ipv6(bracketed)?,
        None => reg_name(name)?,
    };
    Ok(NormalizedHost { name, port })
}

impl fmt::Display for NormalizedHost {
    /// The host to forward: `name` or `name:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// `(name, port text)`; a `:` inside brackets belongs to the address.
fn split(raw: &str) -> Result<(&str, Option<&str>), HostRejected> {
    if raw.starts_with('[') {
        let end = raw.find(']').ok_or(HostRejected::BadIpv6)?;
        let (name, rest) = raw.split_at(end + 1);
        return match rest {
            "" => Ok((name, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((name, Some(port))),
                None => Err(HostRejected::BadIpv6),
            },
        };
    }
    match raw.split_once(':') {
        // Two colons outside brackets: an unbracketed IPv6 address or junk.
        Some((_, port)) if port.contains(':') => Err(HostRejected::BadCharacter),
        Some((name, port)) => Ok((name, Some(port))),
        None => Ok((raw, None)),
    }
}

fn parse_port(port: Option<&str>) -> Result<Option<u16>, HostRejected> {
    let Some(port) = port.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostRejected::BadPort);
    }
    // Leading zeros are legal (`port = *DIGIT`) and dropped; the value is not.
    let digits = port.trim_start_matches('0');
    match digits.parse::<u16>() {
        Ok(port) if digits.len() <= 5 && port != 0 => Ok(Some(port)),
        _ => Err(HostRejected::BadPort),
    }
}

/// `bracketed` is what follows `[`, ending in `]`.
fn ipv6(bracketed: &str) -> Result<String, HostRejected> {
    let inner = bracketed.strip_suffix(']').ok_or(HostRejected::BadIpv6)?;
    let addr: Ipv6Addr = inner.parse().map_err(|_| HostRejected::BadIpv6)?;
    Ok(format!("[{addr}]"))
}

fn reg_name(name: &str) -> Result<String, HostRejected> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostRejected::Empty);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if !name.bytes().all(allowed) {
        return Err(HostRejected::BadCharacter);
    }
    if name.len() > MAX_NAME {
        return Err(HostRejected::TooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostRejected::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(HostRejected::TooLong);
        }
        last = label;
    }
    let name = name.to_ascii_lowercase();
    if is_number(last) && name.parse::<Ipv4Addr>().is_err() {
        return Err(HostRejected::BadIpv4);
    }
    Ok(name)
}

/// Whether a label reads as a number to a URL parser (WHATWG's "ends in a
/// number"): decimal digits, or `0x` and hex digits.
fn is_number(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}
