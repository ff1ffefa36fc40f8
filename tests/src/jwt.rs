//! JWT test kit: an ES256 signer (ring signs; the proxy verifies with
//! `jsonwebtoken`), the hostile tokens the proxy must refuse, and a JWKS
//! server on the loopback of a node's netns (where a `jwksUri` may be
//! plain http).

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};

use crate::netns::enter_netns;

/// The demo's ES256 key (PKCS#8, base64), whose public half is in
/// `policies/jwt.yaml`. It protects nothing: never trust it.
pub const DEMO_KEY_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGCLEWUxzlKaSV1cus/QfYkLuVwQ8Uq5Ry9weqj06X5WhRANCAASSYja3DMAUsRE3zrTBiaWwyd5RoLAFv/NZZAXn0g5mOp7tA7BD339dh81hR0fMur4FSvh1hz6/LvXM+Sv1hI/s";

/// The demo issuer of `policies/jwt.yaml`.
pub const DEMO_ISSUER: &str = "https://login.demo.nodeward";

/// An ES256 key and its key id.
pub struct JwtSigner {
    key: EcdsaKeyPair,
    kid: String,
}

/// Serves a JWKS (or 503 when it has none) on `127.0.0.1:<port>` in a netns.
pub struct JwksServer {
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Base64url without padding, as JOSE writes it.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtSigner {
    /// A fresh P-256 key.
    pub fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pk8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
        Self {
            key: EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref(), &rng).expect("key"),
            kid: kid.to_owned(),
        }
    }

    /// The demo key ([`DEMO_KEY_PKCS8`]), key id `demo`.
    pub fn demo() -> Self {
        let der = base64_decode(DEMO_KEY_PKCS8);
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let key = EcdsaKeyPair::from_pkcs8(alg, &der, &SystemRandom::new()).expect("demo key");
        Self {
            key,
            kid: "demo".to_owned(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid,
            "x": b64url(&point[1..33]), "y": b64url(&point[33..])})
    }

    /// `{"keys": [...]}` with this key.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// A signed token with these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = signing_input(&header, claims);
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    /// `alg: none`, unsigned.
    pub fn unsigned(&self, claims: &Value) -> String {
        let header = json!({"alg": "none", "kid": self.kid});
        format!("{}.", signing_input(&header, claims))
    }

    /// HS256 with the public key as the HMAC secret (key confusion).
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let header = json!({"alg": "HS256", "kid": self.kid});
        let input = signing_input(&header, claims);
        let secret = self.key.public_key().as_ref();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let mac = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64url(mac.as_ref()))
    }
}

/// Standard base64 (with padding), for the fixture above.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

impl JwksServer {
    /// Listens on `127.0.0.1:port` inside netns `ns`; serves `body`.
    pub fn start(ns: &str, port: u16, body: Option<String>) -> Self {
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, s, ns) = (body.clone(), hits.clone(), stop.clone(), ns.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter_netns(&ns).expect("enter netns");
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind jwks");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve_one(stream, &b, &h),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("jwks server ready");
        Self { body, hits, stop }
    }

    /// Serves `body` from now on (`None`: 503).
    pub fn serve(&self, body: Option<String>) {
        *self.body.lock().expect("lock") = body;
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_one(mut stream: std::net::TcpStream, body: &Mutex<Option<String>>, hits: &AtomicUsize) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0; 4096];
    let _ = stream.read(&mut buf);
    hits.fetch_add(1, Ordering::SeqCst);
    let response = match body.lock().expect("lock").clone() {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_owned(),
    };
    let _ = stream.write_all(response.as_bytes());
}
