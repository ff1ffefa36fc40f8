//! HTTP/2 frames written by hand (RFC 9113), for peers that break the rules
//! on purpose: floods of SETTINGS, PING, empty DATA or CONTINUATION frames,
//! streams reset as soon as they open, windows never opened. A real client
//! library would refuse to send most of these.
//!
//! Header blocks use HPACK literals without indexing or Huffman coding
//! (RFC 7541 §6.2.2), the simplest encoding every decoder must accept.
//! [`Frames`] reads what the other side sends back.

use std::io::Read;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// SETTINGS identifiers.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// Error code CANCEL, as a client that gave up sends it.
pub const CANCEL: u32 = 0x8;

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits 24 bits");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface and an empty SETTINGS frame: the start of every connection.
pub fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    out
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// A SETTINGS acknowledgement.
pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

/// A PING with 8 bytes of `data`.
pub fn ping(data: u64) -> Vec<u8> {
    frame(PING, 0, 0, &data.to_be_bytes())
}

/// RST_STREAM with `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// WINDOW_UPDATE of `increment` on `stream` (0: the connection).
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// DATA on `stream`.
pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// A HEADERS frame carrying all of `block` (END_HEADERS set).
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, block)
}

/// A request header block: the pseudo-headers in order, then `extra`.
pub fn request_block(
    method: &str,
    scheme: Option<&str>,
    authority: &str,
    path: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut fields = vec![(":method", method)];
    if let Some(s) = scheme {
        fields.push((":scheme", s));
    }
    fields.push((":authority", authority));
    if let Some(p) = path {
        fields.push((":path", p));
    }
    fields.extend_from_slice(extra);
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(&mut out, name.as_bytes(), value.as_bytes());
    }
    out
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, bytes.len(), 7, 0x00);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, mut n: usize, prefix_bits: u32, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A frame read back: its type, flags, stream and payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a GOAWAY: its error code.
    pub fn goaway_code(&self) -> Option<u32> {
        let code = self.payload.get(4..8)?;
        (self.kind == GOAWAY).then(|| u32::from_be_bytes(code.try_into().unwrap_or_default()))
    }
}

/// Frames read from a stream the server writes to (after its preface,
/// which is just frames).
pub struct Frames<R> {
    reader: R,
}

impl<R: Read> Frames<R> {
    pub fn new(reader: R) -> Self {
        Self { reader }
    }

    /// The next frame; `None` at the end of the stream or on an error
    /// (a timeout set on the underlying socket included).
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.reader.read_exact(&mut head).ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        self.reader.read_exact(&mut payload).ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// Reads frames until the stream ends, for at most `max` frames; the
    /// frames read.
    pub fn drain(&mut self, max: usize) -> Vec<Frame> {
        std::iter::from_fn(|| self.next_frame()).take(max).collect()
    }
}

/// What a peer sent back, tallied from bytes fed in any pieces: frames by
/// type, the first GOAWAY's error code, RST_STREAM codes. Keeps no payload
/// but the few bytes it reads, so a flood's answers cost it nothing.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Frames seen, indexed by type (unknown types at 10).
    pub frames: [u64; 11],
    /// The error code of the first GOAWAY.
    pub goaway: Option<u32>,
    /// RST_STREAM frames with REFUSED_STREAM (0x7).
    pub refused: u64,
    /// HEADERS frames on client streams (responses).
    pub responses: u64,
    /// Bytes fed in.
    pub bytes: u64,
    head: Vec<u8>,
    /// Payload bytes of the current frame still to skip or keep.
    left: usize,
    kept: Vec<u8>,
    kind: u8,
}

impl Tally {
    /// Feeds bytes as they arrive.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.left == 0 && self.head.len() < 9 {
                let take = (9 - self.head.len()).min(bytes.len());
                self.head.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.head.len() == 9 {
                    self.start_frame();
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            if self.kept.len() < 8 {
                let keep = take.min(8 - self.kept.len());
                self.kept.extend_from_slice(&bytes[..keep]);
            }
            bytes = &bytes[take..];
            self.left -= take;
            if self.left == 0 {
                self.end_frame();
            }
        }
    }

    fn start_frame(&mut self) {
        let h = &self.head;
        self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        self.kind = h[3];
        self.kept.clear();
        if h[3] == HEADERS && u32::from_be_bytes([h[5], h[6], h[7], h[8]]) % 2 == 1 {
            self.responses += 1;
        }
        if self.left == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        self.frames[usize::from(self.kind.min(10))] += 1;
        let code = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or_default());
        match self.kind {
            GOAWAY if self.goaway.is_none() && self.kept.len() >= 8 => {
                self.goaway = Some(code(&self.kept[4..8]));
            }
            RST_STREAM if self.kept.len() >= 4 && code(&self.kept[..4]) == 0x7 => {
                self.refused += 1;
            }
            _ => {}
        }
        self.head.clear();
    }
}
