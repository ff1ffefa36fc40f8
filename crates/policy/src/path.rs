//! Request paths in one canonical spelling, so a policy and the application
//! behind it agree on which resource a request names.
//!
//! Every known path bypass of an HTTP authorizer is two spellings of one
//! path: `//admin`, `/./admin`, `/%61dmin`, `/api/..%2Fadmin`, `/admin#x`
//! (CVE-2021-31920, CVE-2021-39156, CVE-2021-39155). The proxy normalises
//! the path, matches policy against the result, and forwards the *same*
//! result, so nothing the application sees escaped the check.
//!
//! Normal form:
//! - the fragment is dropped; the query is split off, kept for forwarding
//!   and never matched;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; other escapes keep uppercase hex digits;
//! - characters RFC 3986 does not allow raw in a path (space, `"`, `<`,
//!   `>`, `^`, `` ` ``, `{`, `|`, `}`, non-ASCII) are percent-encoded;
//! - runs of `/` are merged and `.`/`..` segments resolved, never above `/`.
//!
//! Rejected (the caller answers 400): a path not starting with `/`,
//! control characters, `%00`, invalid escapes, an encoded `/` or `\`
//! (`%2F`, `%5C`: servers disagree on whether they separate segments), a
//! raw `\` (some servers treat it as `/`, some do not; rejecting is the only
//! answer that is right for all of them), and `;` raw or encoded in the path
//! (Java servers strip `;` path parameters before routing: `/api/..;/admin`
//! is `/admin` to Tomcat but under `/api/` to a policy, and `/admin;x` is
//! `/admin`).

use std::fmt;

use super::pattern::Pattern;

/// A request path in normal form, and the query to forward with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// What policy matches on; starts with `/`.
    pub path: String,
    /// Everything after the first `?`, untouched; `Some("")` for a bare `?`.
    pub query: Option<String>,
}

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathRejected {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("request path contains an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSeparator,
    #[error("request path contains a backslash")]
    Backslash,
    #[error("request path contains ';' (a path parameter), raw or percent-encoded")]
    Semicolon,
    #[error("request target contains a control character, raw or percent-encoded")]
    ControlCharacter,
    #[error("request path has an invalid percent-encoding")]
    BadPercentEncoding,
}

/// Normalises `raw`, the request-target's path with optional `?query` and
/// `#fragment`.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathRejected> {
    if raw.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathRejected::ControlCharacter);
    }
    let raw = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(PathRejected::NotAbsolute);
    }
    let path = remove_dot_segments(&canonical_chars(path)?);
    Ok(NormalizedPath { path, query })
}

impl NormalizedPath {
    /// The request-target to forward: `path` or `path?query`.
    pub fn request_target(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        match &self.query {
            Some(query) => write!(f, "?{query}"),
            None => Ok(()),
        }
    }
}

/// Whether `path` is already in normal form (no query); allocation-free, for
/// checking what callers pass to `evaluate_request`.
pub(super) fn is_normalized(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let dot = segment == "." || segment == "..";
        if dot || (segment.is_empty() && !last) || !is_canonical_segment(segment) {
            return false;
        }
    }
    true
}

/// Checks that a policy's path pattern is in normal form; a pattern that is
/// not could never match a normalised path, a silent hole in a DENY rule.
/// The part a `*` stands next to may be a partial segment (`/.well*`).
pub(super) fn check_pattern(pattern: &Pattern) -> Result<(), String> {
    let (text, first_partial, last_partial) = match pattern {
        Pattern::Presence => return Ok(()),
        Pattern::Exact(t) => (t, false, false),
        Pattern::Prefix(t) => (t, false, true),
        Pattern::Suffix(t) => (t, true, false),
    };
    if !first_partial && !text.starts_with('/') {
        return Err("path must start with '/' (or be a `*suffix` match)".to_owned());
    }
    match canonical_chars(text) {
        Ok(canonical) if canonical == *text => {}
        Ok(canonical) => return Err(format!("not in normal form; write {canonical:?}")),
        Err(why) => {
            return Err(format!(
                "{why}; such requests are refused, so it never matches"
            ))
        }
    }
    check_segments(text, first_partial, last_partial)
}

fn check_segments(text: &str, first_partial: bool, last_partial: bool) -> Result<(), String> {
    let segments: Vec<&str> = text.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let partial = (i == 0 && first_partial) || (i == last && last_partial);
        let edge = i == 0 || i == last;
        if segment.is_empty() && !edge {
            return Err(
                "empty segment (`//`); requests are matched with `/` runs merged".to_owned(),
            );
        }
        if (*segment == "." || *segment == "..") && !partial {
            return Err("`.` or `..` segment; requests are matched with those resolved".to_owned());
        }
    }
    Ok(())
}

/// One spelling per character: decodes escaped unreserved characters,
/// uppercases other escapes, escapes characters not allowed raw.
fn canonical_chars(path: &str) -> Result<String, PathRejected> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = decode_escape(bytes.get(i + 1..i + 3))?;
                match byte {
                    b'/' | b'\\' => return Err(PathRejected::EncodedSeparator),
                    b';' => return Err(PathRejected::Semicolon),
                    // Encoded CR/LF and friends have no business in a path and
                    // make log and header injection easy downstream.
                    b if b.is_ascii_control() => return Err(PathRejected::ControlCharacter),
                    b if is_unreserved(b) => out.push(char::from(b)),
                    b => push_escaped(&mut out, b),
                }
                i += 3;
            }
            b'\\' => return Err(PathRejected::Backslash),
            b';' => return Err(PathRejected::Semicolon),
            b if b.is_ascii_control() => return Err(PathRejected::ControlCharacter),
            b if is_path_char(b) => {
                out.push(char::from(b));
                i += 1;
            }
            b => {
                push_escaped(&mut out, b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, with empty segments dropped (merging
/// `//` runs); a final `.`, `..` or empty segment leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            segment => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

/// Accepts exactly what [`canonical_chars`] can output within a segment: an
/// escape it keeps (uppercase, of a byte it neither decodes nor rejects) or
/// a character it keeps raw.
fn is_canonical_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let upper = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(upper));
            match hex.and_then(|h| decode_escape(Some(h)).ok()) {
                Some(b) if !is_unreserved(b) && !is_refused_escape(b) => i += 3,
                _ => return false,
            }
        } else if is_path_char(bytes[i]) && !matches!(bytes[i], b'/' | b';') {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Bytes [`canonical_chars`] refuses when percent-encoded.
fn is_refused_escape(b: u8) -> bool {
    matches!(b, b'/' | b'\\' | b';') || b.is_ascii_control()
}

fn decode_escape(hex: Option<&[u8]>) -> Result<u8, PathRejected> {
    let digit = |b: u8| char::from(b).to_digit(16);
    match hex {
        Some(&[hi, lo]) => match (digit(hi), digit(lo)) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(PathRejected::BadPercentEncoding),
        },
        _ => Err(PathRejected::BadPercentEncoding),
    }
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xF)]));
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters RFC 3986 allows raw in a path: unreserved, sub-delims, `:`,
/// `@` and `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}
