//! End-user identity: Istio's `RequestAuthentication` (JWT).
//!
//! A workload selected by a `RequestAuthentication` accepts tokens from the
//! issuers its `jwtRules` name. A request without a token passes with no
//! request principal; a request with one must carry a valid one, else the
//! proxy answers 401. Valid means: a signature that checks with a key of the
//! rule's JWKS, an issuer the rule names, one of its `audiences` when it
//! sets any, and `exp`/`nbf` holding with [`CLOCK_SKEW`] of slack.
//!
//! Only asymmetric algorithms are accepted ([`ALGORITHMS`]): `alg: none`
//! and every HMAC algorithm are refused before any key is looked at, which
//! also rules out the RS-to-HS key-confusion trick (an HMAC "signed" with the
//! RSA public key). JWKS keys of type `oct` are refused at load. A token with
//! a `crit` header is refused (nodeward understands no JOSE extension), and
//! so is one over [`MAX_TOKEN_BYTES`]. Signatures are checked by the
//! `jsonwebtoken` crate (on ring); this module only chooses the key and
//! checks the claims.
//!
//! Keys come inline (`jwks`) or from a `jwksUri`, which this crate does not
//! fetch (no I/O here): the proxy's fetcher is handed in as a [`KeySource`].
//!
//! [`validate`] and [`parse_unverified`] are pure functions of their inputs,
//! for fuzzing.

use std::{
    borrow::Cow,
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
    Algorithm, DecodingKey, Validation,
};
use serde_json::{Map, Value};

use super::{Destination, PolicyRef, PolicySet};

mod keyset;
pub(super) mod rule;
#[cfg(test)]
pub(crate) mod tests;

pub use jsonwebtoken::jwk;
pub use keyset::{read_key_set, KeySet, KeySetError};
pub use rule::{JwtRule, Keys, TokenLocation};

/// Larger tokens are refused unread: real ones are a few hundred bytes, and
/// a huge one only costs parsing time.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Slack allowed on `exp` and `nbf` for clocks that disagree (Istio's).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The algorithms a token may be signed with: asymmetric ones only.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused. [`JwtError::as_str`] is the metric label
/// (`nodeward_jwt_validations_total{result}`) and the log word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("token is larger than 16 KiB")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm is not an accepted asymmetric algorithm (none and HMAC are refused)")]
    UnsupportedAlgorithm,
    #[error("token has `crit` header parameters nodeward does not understand")]
    UnsupportedCrit,
    #[error("token issuer is not one of the workload's jwtRules")]
    UnknownIssuer,
    #[error("token key id is not in the issuer's JWKS")]
    UnknownKid,
    #[error("token signature does not verify with the issuer's keys")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token audience is not one the rule accepts")]
    WrongAudience,
    #[error("the issuer's keys (jwksUri) have not been fetched")]
    KeysUnavailable,
    #[error("request carries more than one token")]
    MultipleTokens,
}

/// The end-user identity of a request whose token was valid: what
/// `request.auth.*` and `requestPrincipals` match against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestAuth {
    /// `<iss>/<sub>`; `None` when the token has no `sub`.
    pub principal: Option<String>,
    /// `aud` (a string or a list of strings).
    pub audiences: Vec<String>,
    /// `azp`, the authorized presenter.
    pub presenter: Option<String>,
    /// Every claim, for `request.auth.claims[...]`.
    pub claims: Map<String, Value>,
}

/// What a token's header and payload say before any signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    /// `iss`, when it is a string.
    pub issuer: Option<String>,
}

/// The JWKS of a `jwksUri`, as the proxy's fetcher has them.
pub trait KeySource: Send + Sync {
    /// The last keys fetched from `uri`; `None` until a fetch succeeded.
    fn keys(&self, uri: &str) -> Option<Arc<JwkSet>>;
    /// A token named a key id the keys of `uri` lack: a hint to refetch
    /// (the fetcher rate-limits it).
    fn unknown_kid(&self, _uri: &str) {}
}

/// A [`KeySource`] that has nothing: every `jwksUri` is unavailable
/// (`policy explain`, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

/// The outcome of authenticating one request, and how to rewrite it.
#[derive(Debug)]
pub struct Authentication {
    /// Whether any `RequestAuthentication` selects the workload.
    pub applies: bool,
    /// `Ok(None)`: no token. `Err`: the proxy answers 401.
    pub result: Result<Option<RequestAuth>, JwtError>,
    /// Headers the token came in, to remove (`forwardOriginalToken: false`).
    strip_headers: Vec<HeaderName>,
    /// Query parameters the token came in, to remove.
    strip_params: Vec<String>,
    /// `outputClaimToHeaders`: every name is removed from the request, then
    /// set when the claim has a value.
    claim_headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl JwtError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_alg",
            Self::UnsupportedCrit => "unsupported_crit",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::KeysUnavailable => "keys_unavailable",
            Self::MultipleTokens => "multiple_tokens",
        }
    }

    /// Every label, for tests that pin them.
    pub const ALL: [JwtError; 12] = [
        Self::TooLarge,
        Self::Malformed,
        Self::UnsupportedAlgorithm,
        Self::UnsupportedCrit,
        Self::UnknownIssuer,
        Self::UnknownKid,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongAudience,
        Self::KeysUnavailable,
        Self::MultipleTokens,
    ];
}

impl KeySource for NoKeys {
    fn keys(&self, _uri: &str) -> Option<Arc<JwkSet>> {
        None
    }
}

impl Authentication {
    /// No `RequestAuthentication` applies: no token is looked for.
    pub fn none() -> Self {
        Self {
            applies: false,
            result: Ok(None),
            strip_headers: Vec::new(),
            strip_params: Vec::new(),
            claim_headers: Vec::new(),
        }
    }

    /// The request principal, when a valid token gave one.
    pub fn principal(&self) -> Option<&str> {
        self.result.as_ref().ok()?.as_ref()?.principal.as_deref()
    }

    /// The identity for [`crate::Request::auth`].
    pub fn identity(&self) -> Option<&RequestAuth> {
        self.result.as_ref().ok()?.as_ref()
    }

    /// Applies the rewrite to an allowed request: removes the token (unless
    /// forwarded) and sets the claim headers. Returns the new query when a
    /// parameter was removed from it (`None`: leave the query alone).
    pub fn rewrite(&self, headers: &mut HeaderMap, query: Option<&str>) -> Option<String> {
        for name in &self.strip_headers {
            headers.remove(name);
        }
        for (name, value) in &self.claim_headers {
            headers.remove(name);
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
        let query = query?;
        if self.strip_params.is_empty() {
            return None;
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                !self
                    .strip_params
                    .iter()
                    .any(|p| param_name(pair) == p.as_str())
            })
            .collect();
        Some(kept.join("&"))
    }
}

impl PolicySet {
    /// The JWT rules of every `RequestAuthentication` that selects `dest`:
    /// the root namespace's, then its own namespace's (Istio merges them).
    pub fn jwt_rules(&self, dest: &Destination<'_>) -> Vec<(&PolicyRef, &JwtRule)> {
        let own = self.authn_index.non_root(dest.namespace);
        let own = own.map_or(&[][..], Vec::as_slice);
        let policies = self.authn_index.root().iter().chain(own);
        policies
            .map(|&i| &self.authn[i].policy)
            .filter(|p| p.selector.matches(dest.labels))
            .flat_map(|p| p.rules.iter().map(move |r| (&p.id, r)))
            .collect()
    }

    /// Whether a `RequestAuthentication` selects the destination.
    pub fn authenticates(&self, dest: &Destination<'_>) -> bool {
        let own = self.authn_index.non_root(dest.namespace);
        let own = own.map_or(&[][..], Vec::as_slice);
        let mut policies = self.authn_index.root().iter().chain(own);
        policies.any(|&i| self.authn[i].policy.selector.matches(dest.labels))
    }

    /// Every `jwksUri` in the set: what the proxy's fetcher keeps fresh.
    pub fn jwks_uris(&self) -> BTreeSet<String> {
        let rules = self.authn.iter().flat_map(|p| p.policy.rules.iter());
        rules
            .filter_map(|r| match &r.keys {
                Keys::Uri(uri) => Some(uri.to_string()),
                Keys::Inline(_) => None,
            })
            .collect()
    }

    /// Finds the request's token, if any, and validates it against the
    /// rules that select `dest`. `query` is the request's query string.
    pub fn authenticate(
        &self,
        dest: &Destination<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
        keys: &dyn KeySource,
        now: SystemTime,
    ) -> Authentication {
        let rules = self.jwt_rules(dest);
        if rules.is_empty() {
            return Authentication::none();
        }
        let rules: Vec<&JwtRule> = rules.into_iter().map(|(_, r)| r).collect();
        authenticate_with(&rules, headers, query, keys, now)
    }
}

/// [`PolicySet::authenticate`] once the rules are chosen.
pub fn authenticate_with(
    rules: &[&JwtRule],
    headers: &HeaderMap,
    query: Option<&str>,
    keys: &dyn KeySource,
    now: SystemTime,
) -> Authentication {
    let found = find_tokens(rules, headers, query);
    let mut auth = Authentication {
        applies: true,
        ..Authentication::none()
    };
    let distinct: BTreeSet<&str> = found.iter().map(|f| f.token.as_str()).collect();
    let (result, accepted_by) = match distinct.len() {
        0 => (Ok(None), None),
        1 => match validate_found(rules, &found, keys, now) {
            Ok((identity, rule)) => (Ok(Some(identity)), Some(rule)),
            Err(e) => (Err(e), None),
        },
        _ => (Err(JwtError::MultipleTokens), None),
    };
    auth.result = result;
    if let Ok(identity) = &auth.result {
        // The rule that accepted the token decides whether it goes on to
        // the pod (a token is one token wherever it was found).
        let strip = accepted_by.is_some_and(|i| !rules[i].forward_original_token);
        if strip {
            auth.strip_headers = found.iter().filter_map(|f| f.header.clone()).collect();
            auth.strip_params = found.iter().filter_map(|f| f.param.clone()).collect();
        }
        auth.claim_headers = claim_headers(rules, accepted_by.zip(identity.as_ref()));
    }
    auth
}

/// Checks `token` against one issuer's rule: the pure core of
/// authentication, for fuzzing and `policy explain`. `keys` are the rule's
/// JWKS (inline or fetched).
pub fn validate(
    token: &str,
    issuer: &str,
    audiences: &[String],
    keys: &JwkSet,
    now: SystemTime,
) -> Result<RequestAuth, JwtError> {
    let unverified = parse_unverified(token)?;
    if unverified.issuer.as_deref() != Some(issuer) {
        return Err(JwtError::UnknownIssuer);
    }
    let claims = verify_signature(token, &unverified, keys)?;
    check_claims(&claims, audiences, now)?;
    Ok(identity(claims, issuer))
}

/// Reads a token's header and issuer without checking the signature, and
/// refuses what no key could make acceptable: oversize, malformed, a
/// refused algorithm, a `crit` header.
pub fn parse_unverified(token: &str) -> Result<Unverified, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = decode_object(header)?;
    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) => accepted_algorithm(alg)?,
        _ => return Err(JwtError::Malformed),
    };
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedCrit);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    let issuer = match decode_object(payload)?.get("iss") {
        Some(Value::String(iss)) => Some(iss.clone()),
        _ => None,
    };
    Ok(Unverified {
        algorithm,
        kid,
        issuer,
    })
}

/// A token and where it was found.
struct Found {
    token: String,
    rule: usize,
    header: Option<HeaderName>,
    param: Option<String>,
}

/// Every token at every location of every rule.
fn find_tokens(rules: &[&JwtRule], headers: &HeaderMap, query: Option<&str>) -> Vec<Found> {
    let mut found = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for location in rule.locations() {
            match &location {
                TokenLocation::Header { name, prefix } => {
                    for value in headers.get_all(name) {
                        if let Some(token) = strip_prefix(value.as_bytes(), prefix) {
                            found.push(Found {
                                token,
                                rule: i,
                                header: Some(name.clone()),
                                param: None,
                            });
                        }
                    }
                }
                TokenLocation::Param(name) => {
                    let pairs = query.into_iter().flat_map(|q| q.split('&'));
                    for pair in pairs.filter(|p| param_name(p) == name.as_str()) {
                        let value = pair.split_once('=').map_or("", |(_, v)| v);
                        found.push(Found {
                            token: decode_component(value).into_owned(),
                            rule: i,
                            header: None,
                            param: Some(name.clone()),
                        });
                    }
                }
            }
        }
    }
    found
}

/// The value after `prefix` (compared ignoring ASCII case, as `Bearer` is),
/// trimmed; `None` when the value does not start with it. Bytes that are
/// not UTF-8 become U+FFFD, so such a value is found, and refused as
/// malformed, rather than passed to the pod unchecked.
fn strip_prefix(value: &[u8], prefix: &str) -> Option<String> {
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix.as_bytes()) {
        return None;
    }
    let rest = String::from_utf8_lossy(&value[prefix.len()..]);
    Some(rest.trim().to_owned())
}

/// A query parameter's name as the application will decode it: a token
/// under `access%5Ftoken` must not slip past the check for `access_token`.
fn param_name(pair: &str) -> Cow<'_, str> {
    decode_component(pair.split_once('=').map_or(pair, |(k, _)| k))
}

/// Form decoding of one query component: `+` is a space, `%XX` a byte
/// (invalid UTF-8 becomes U+FFFD, which no token or name contains).
fn decode_component(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
    Cow::Owned(decoded.into_owned())
}

/// Validates the one token found with the rules that found it and name its
/// issuer; the first rule that accepts it wins, else the first refusal.
/// Validates the one token found; the identity and the index of the rule
/// that accepted it.
fn validate_found(
    rules: &[&JwtRule],
    found: &[Found],
    keys: &dyn KeySource,
    now: SystemTime,
) -> Result<(RequestAuth, usize), JwtError> {
    let token = found.first().map_or("", |f| f.token.as_str());
    let unverified = parse_unverified(token)?;
    let iss = unverified
        .issuer
        .as_deref()
        .ok_or(JwtError::UnknownIssuer)?;
    let mut candidates = found
        .iter()
        .map(|f| f.rule)
        .filter(|&i| rules[i].issuer == iss)
        .peekable();
    if candidates.peek().is_none() {
        return Err(JwtError::UnknownIssuer);
    }
    let mut first_error = None;
    for index in candidates {
        let rule = rules[index];
        let result = rule_keys(rule, keys).and_then(|jwks| {
            let result = verify_signature(token, &unverified, &jwks);
            if let (Err(JwtError::UnknownKid), Keys::Uri(uri)) = (&result, &rule.keys) {
                keys.unknown_kid(uri);
            }
            let claims = result?;
            check_claims(&claims, &rule.audiences, now)?;
            Ok(identity(claims, iss))
        });
        match result {
            Ok(auth) => return Ok((auth, index)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(JwtError::UnknownIssuer))
}

fn rule_keys(rule: &JwtRule, keys: &dyn KeySource) -> Result<Arc<JwkSet>, JwtError> {
    match &rule.keys {
        Keys::Inline(jwks) => Ok(jwks.clone()),
        Keys::Uri(uri) => keys.keys(uri).ok_or(JwtError::KeysUnavailable),
    }
}

/// The claims, once a key of `keys` verifies the signature. Keys are chosen
/// by `kid` when the token names one, else every key that fits the
/// algorithm is tried.
fn verify_signature(
    token: &str,
    unverified: &Unverified,
    keys: &JwkSet,
) -> Result<Map<String, Value>, JwtError> {
    let alg = unverified.algorithm;
    let named: Vec<&Jwk> = match &unverified.kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid))
            .collect(),
        None => keys.keys.iter().collect(),
    };
    if named.is_empty() {
        return Err(JwtError::UnknownKid);
    }
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    for jwk in named.into_iter().filter(|k| key_fits(k, alg)) {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) if is_signature_error(&e) => continue,
            Err(_) => return Err(JwtError::Malformed),
        }
    }
    Err(JwtError::BadSignature)
}

/// Signature mismatches and keys that turn out unusable for the token;
/// anything else is the token's fault.
fn is_signature_error(e: &jsonwebtoken::errors::Error) -> bool {
    use jsonwebtoken::errors::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::Crypto(_)
    )
}

/// Whether `jwk` can verify `alg`: its type and curve fit, and its own
/// `alg`, when it names one, is `alg`.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(own) = jwk.common.key_algorithm {
        if !same_algorithm(own, alg) {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

fn same_algorithm(key: KeyAlgorithm, alg: Algorithm) -> bool {
    let name = format!("{key:?}");
    name == format!("{alg:?}")
}

/// `alg` when it is one of [`ALGORITHMS`].
fn accepted_algorithm(alg: &str) -> Result<Algorithm, JwtError> {
    ALGORITHMS
        .into_iter()
        .find(|a| format!("{a:?}") == alg)
        .ok_or(JwtError::UnsupportedAlgorithm)
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

/// `exp`, `nbf` (numbers when present, with [`CLOCK_SKEW`]) and `aud`.
fn check_claims(
    claims: &Map<String, Value>,
    audiences: &[String],
    now: SystemTime,
) -> Result<(), JwtError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let skew = CLOCK_SKEW.as_secs_f64();
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(JwtError::Malformed),
        Some(_) => Err(JwtError::Malformed),
    };
    if time("exp")?.is_some_and(|exp| now > exp + skew) {
        return Err(JwtError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| now + skew < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if !audiences.is_empty()
        && !token_audiences(claims)
            .iter()
            .any(|a| audiences.contains(a))
    {
        return Err(JwtError::WrongAudience);
    }
    Ok(())
}

fn token_audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn identity(claims: Map<String, Value>, issuer: &str) -> RequestAuth {
    let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    RequestAuth {
        principal: string("sub").map(|sub| format!("{issuer}/{sub}")),
        audiences: token_audiences(&claims),
        presenter: string("azp"),
        claims,
    }
}

/// Every `outputClaimToHeaders` name of the rules: each is removed from the
/// request, and those of the rule that accepted the token (`accepted`: its
/// index and the identity) are set to the claim's value when the token has
/// it (a string, number or boolean; never CR, LF or other control
/// characters, which a header cannot carry safely). Another issuer's rule
/// never fills its headers from this token (Istio).
fn claim_headers(
    rules: &[&JwtRule],
    accepted: Option<(usize, &RequestAuth)>,
) -> Vec<(HeaderName, Option<HeaderValue>)> {
    let mut out: Vec<(HeaderName, Option<HeaderValue>)> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let identity = accepted.filter(|(at, _)| *at == index).map(|(_, id)| id);
        for (header, claim) in &rule.output_claims {
            let value = identity
                .and_then(|id| claim_value(&id.claims, claim))
                .and_then(header_value);
            match out.iter_mut().find(|(name, _)| name == header) {
                Some(slot) => {
                    if value.is_some() {
                        slot.1 = value;
                    }
                }
                None => out.push((header.clone(), value)),
            }
        }
    }
    out
}

/// A claim at a path of object keys (`[a][b]` is `["a", "b"]`).
pub(crate) fn claim_at<'c>(claims: &'c Map<String, Value>, path: &[String]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |value, key| value.as_object()?.get(key))
}

fn claim_value(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    match claim_at(claims, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Longer claim values are not set as headers: a token is at most
/// [`MAX_TOKEN_BYTES`], but one claim should not fill a pod's header limit.
pub const MAX_CLAIM_HEADER_BYTES: usize = 4096;

fn header_value(text: String) -> Option<HeaderValue> {
    if text.len() > MAX_CLAIM_HEADER_BYTES || text.chars().any(|c| c.is_control()) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// The claim values a `request.auth.claims[...]` pattern is matched
/// against: a string, or the strings of a list (Istio).
pub(crate) fn claim_strings<'c>(claims: &'c Map<String, Value>, path: &[String]) -> Vec<&'c str> {
    match claim_at(claims, path) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}
