//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` headers, parsed strictly.
//!
//! Every byte comes from a peer: parsing never panics, never allocates for
//! a `traceparent`, and anything that is not exactly the spec's grammar is
//! `None`, which the caller treats as "no parent" (a new trace starts, as
//! the spec asks). Nothing here is ever logged.

use http::{HeaderMap, HeaderValue};

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header's name.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on; the spec's list of 32 members fits in
/// 512 bytes of most real states, and a longer one may be dropped whole.
pub const MAX_TRACESTATE: usize = 512;

/// The sampled bit of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// A span's context as `traceparent` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// `trace-id`: the whole trace's id.
    pub trace_id: [u8; 16],
    /// `parent-id`: the span this context names.
    pub span_id: [u8; 8],
    /// `trace-flags`; only the sampled bit means anything in version 00.
    pub flags: u8,
}

impl TraceParent {
    /// Parses one `traceparent` value. Version `00` must be exactly 55
    /// bytes; a later version may append fields after a `-`, which are
    /// ignored (the spec's forward compatibility). Version `ff`, upper-case
    /// hex, and all-zero ids are invalid.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let exact = version == 0 && value.len() == 55;
        let extended = version > 0 && (value.len() == 55 || value[55] == b'-');
        if version == 0xff || !(exact || extended) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_array(&value[3..35])?;
        let span_id: [u8; 8] = hex_array(&value[36..52])?;
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The caller's context from `headers`: exactly one valid
    /// `traceparent` (two are ambiguous, so neither is trusted).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(first.as_bytes())
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The same trace and span with the sampled flag as given (and every
    /// other flag cleared: version 00 defines no other).
    pub fn with_sampled(self, sampled: bool) -> Self {
        Self {
            flags: u8::from(sampled),
            ..self
        }
    }

    /// The header value, version `00`, lower-case hex.
    pub fn to_header(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        write_hex(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        write_hex(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out)
            .unwrap_or_else(|_| unreachable!("hex digits and dashes are a valid header value"))
    }
}

/// The caller's `tracestate`, to pass on unchanged: all its field lines
/// joined with `,` (RFC 9110 §5.3), if they are printable ASCII and no
/// longer than [`MAX_TRACESTATE`] in all. The proxy adds no member of its
/// own. `None` drops it, which the spec allows for a state too long or
/// malformed.
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for value in headers.get_all(TRACESTATE) {
        let bytes = value.as_bytes();
        if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
            return None;
        }
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(bytes);
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    if joined.iter().all(|b| *b == b' ' || *b == b',') {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn hex_array<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(out)
}

/// Two lower-case hex digits (the spec allows no upper case).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    match pair {
        [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
        _ => None,
    }
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Lower-case hex of `bytes` (ids in span records and test output).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
