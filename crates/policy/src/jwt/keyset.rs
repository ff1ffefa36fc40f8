//! Reading a fetched JSON Web Key Set key by key.
//!
//! Identity providers publish keys nodeward has no use for next to the
//! signing keys it needs: encryption keys, curves or algorithms the JOSE
//! crate does not know (`P-521`/`ES512`, `X25519`, `RSA-OAEP-384`), or
//! symmetric keys. Parsed as one `JwkSet`, a single such key would fail the
//! whole set, and every token of the issuer would be refused until the
//! provider changed its keys. So each key is read on its own: the ones that
//! parse as asymmetric keys are kept, the others are named in
//! [`KeySet::skipped`] for a log line. A set with no usable key at all is an
//! error (the fetcher then keeps the last good keys).
//!
//! Inline `jwks` in a policy file stay strict (see the file format): there
//! the policy author can fix the key, and a load error says which.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use serde::Deserialize;
use serde_json::Value;

/// The usable keys of a set, and what was left out.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The keys a signature may be checked with.
    pub set: JwkSet,
    /// One entry per key left out: its index, `kid` when it has one, and
    /// why. Untrusted text: escape it before logging.
    pub skipped: Vec<String>,
}

/// Why a fetched key set is refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set: {0}")]
    NotAKeySet(#[source] serde_json::Error),
    /// Every key was left out.
    #[error("no usable key ({})", .0.join("; "))]
    NoUsableKey(Vec<String>),
}

/// The outer shape only: other members (RFC 7517 allows them) are ignored,
/// and each key stays raw JSON until it is read on its own.
#[derive(Deserialize)]
struct KeySetFile {
    keys: Vec<Value>,
}

/// Reads `json` as a JWKS, keeping every key that parses as an asymmetric
/// key and naming the others.
pub fn read_key_set(json: &[u8]) -> Result<KeySet, KeySetError> {
    let file: KeySetFile = serde_json::from_slice(json).map_err(KeySetError::NotAKeySet)?;
    let mut keys = Vec::with_capacity(file.keys.len());
    let mut skipped = Vec::new();
    for (i, raw) in file.keys.into_iter().enumerate() {
        let name = key_name(i, &raw);
        match serde_json::from_value::<Jwk>(raw) {
            Ok(jwk) if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) => {
                // Only asymmetric algorithms are accepted; a shared secret
                // is never kept in memory.
                skipped.push(format!("{name}: a symmetric (oct) key"));
            }
            Ok(jwk) => keys.push(jwk),
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(KeySetError::NoUsableKey(skipped));
    }
    Ok(KeySet {
        set: JwkSet { keys },
        skipped,
    })
}

/// `key 2 (kid "abc")`, or `key 2` without a string `kid`.
fn key_name(index: usize, raw: &Value) -> String {
    match raw.get("kid").and_then(Value::as_str) {
        Some(kid) => format!("key {index} (kid {kid:?})"),
        None => format!("key {index}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p256(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"})
    }

    fn kids(set: &KeySet) -> Vec<&str> {
        let ids = set
            .set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref());
        ids.collect()
    }

    #[test]
    fn keys_the_jose_crate_cannot_read_are_skipped_not_fatal() {
        let json = json!({"keys": [
            {"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "p521",
             "x": "AQ", "y": "AQ"},
            p256("good"),
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AQ"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "RSA", "alg": "RSA-OAEP-384", "kid": "enc", "n": "AQ", "e": "AQAB"},
        ]});
        let set = read_key_set(json.to_string().as_bytes()).expect("one usable key");
        assert_eq!(kids(&set), ["good"]);
        assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
        assert!(set.skipped[0].starts_with("key 0 (kid \"p521\"): "));
        assert_eq!(
            set.skipped[2],
            "key 3 (kid \"secret\"): a symmetric (oct) key"
        );
    }

    #[test]
    fn a_set_without_a_usable_key_or_keys_array_is_refused() {
        let only_secret = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        let err = read_key_set(only_secret.to_string().as_bytes()).expect_err("no usable key");
        assert!(matches!(err, KeySetError::NoUsableKey(ref why) if why.len() == 1));
        assert!(matches!(
            read_key_set(br#"{"keys": []}"#),
            Err(KeySetError::NoUsableKey(_))
        ));
        for bad in [&b"[]"[..], b"{}", b"not json", br#"{"keys": {}}"#] {
            assert!(matches!(read_key_set(bad), Err(KeySetError::NotAKeySet(_))));
        }
    }

    #[test]
    fn other_members_of_the_set_are_ignored() {
        let json = json!({"keys": [p256("a")], "issuer": "https://idp.example"});
        let set = read_key_set(json.to_string().as_bytes()).expect("valid");
        assert_eq!(kids(&set), ["a"]);
        assert!(set.skipped.is_empty());
    }
}
