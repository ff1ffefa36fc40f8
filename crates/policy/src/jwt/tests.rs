//! Token validation, token locations, rewrites, and the policy fields that
//! use the end-user identity.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{HeaderMap, HeaderValue};
use ring::{
    rand::SystemRandom,
    signature::{self, KeyPair as _},
};
use serde_json::{json, Value};

use super::*;
use crate::{Connection, Decision, Destination, L4Decision, Request, Settings, Source};

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A test signer: ring signs, `jsonwebtoken` verifies.
pub(crate) enum Signer {
    Rsa(signature::RsaKeyPair),
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
}

pub(crate) fn rsa(n: u8) -> Signer {
    let text = match n {
        1 => include_str!("testdata/rsa1.der.b64"),
        _ => include_str!("testdata/rsa2.der.b64"),
    };
    let der = STANDARD.decode(text.trim()).expect("fixture base64");
    Signer::Rsa(signature::RsaKeyPair::from_der(&der).expect("fixture key"))
}

fn ec() -> Signer {
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let rng = SystemRandom::new();
    let pk8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
    Signer::Ec(signature::EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref(), &rng).expect("key"))
}

fn ed() -> Signer {
    let pk8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
    Signer::Ed(signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).expect("key"))
}

impl Signer {
    fn jwk(&self, kid: &str) -> Value {
        match self {
            Self::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "n": b64(&c.n), "e": b64(&c.e)})
            }
            Self::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Self::Ed(k) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RS256",
            Self::Ec(_) => "ES256",
            Self::Ed(_) => "EdDSA",
        }
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Self::Rsa(k) => {
                let alg: &dyn signature::RsaEncoding = match header["alg"].as_str() {
                    Some("PS256") => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(alg, &rng, input.as_bytes(), &mut sig).expect("sign");
                sig
            }
            Self::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Self::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    pub(crate) fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn jwks(keys: &[Value]) -> JwkSet {
    serde_json::from_value(json!({ "keys": keys })).expect("jwks")
}

pub(crate) fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": NOW + 3600, "nbf": NOW - 10,
           "azp": "web", "groups": ["admin", "dev"], "org": {"team": "payments"}})
}

pub(crate) fn with(claims: Value, key: &str, value: Value) -> Value {
    let mut claims = claims;
    claims[key] = value;
    claims
}

fn check(token: &str, keys: &JwkSet) -> Result<RequestAuth, JwtError> {
    validate(token, ISS, &["shop".to_owned()], keys, now())
}

#[test]
fn valid_rs256_token_gives_the_request_principal() {
    let key = rsa(1);
    let auth = check(&key.sign("k1", &claims()), &jwks(&[key.jwk("k1")])).expect("valid");
    assert_eq!(
        auth.principal.as_deref(),
        Some("https://issuer.example/alice")
    );
    assert_eq!(auth.audiences, ["shop"]);
    assert_eq!(auth.presenter.as_deref(), Some("web"));
}

#[test]
fn es256_ps256_and_eddsa_tokens_are_accepted() {
    for key in [ec(), ed()] {
        let token = key.sign("k", &claims());
        assert!(
            check(&token, &jwks(&[key.jwk("k")])).is_ok(),
            "{}",
            key.alg()
        );
    }
    let key = rsa(1);
    let token = key.sign_with(&json!({"alg": "PS256", "kid": "k"}), &claims());
    assert!(check(&token, &jwks(&[key.jwk("k")])).is_ok());
}

#[test]
fn a_token_without_kid_is_tried_with_every_fitting_key() {
    let (one, two) = (rsa(1), rsa(2));
    let token = two.sign_with(&json!({"alg": "RS256"}), &claims());
    let keys = jwks(&[ec().jwk("e"), one.jwk("a"), two.jwk("b")]);
    assert!(check(&token, &keys).is_ok());
}

#[test]
fn expired_token_is_refused_after_the_clock_skew() {
    let key = rsa(1);
    let keys = jwks(&[key.jwk("k")]);
    let within = key.sign("k", &with(claims(), "exp", json!(NOW - 59)));
    assert!(check(&within, &keys).is_ok());
    let expired = key.sign("k", &with(claims(), "exp", json!(NOW - 61)));
    assert_eq!(check(&expired, &keys), Err(JwtError::Expired));
}

#[test]
fn not_yet_valid_token_is_refused_beyond_the_clock_skew() {
    let key = rsa(1);
    let keys = jwks(&[key.jwk("k")]);
    let within = key.sign("k", &with(claims(), "nbf", json!(NOW + 59)));
    assert!(check(&within, &keys).is_ok());
    let early = key.sign("k", &with(claims(), "nbf", json!(NOW + 61)));
    assert_eq!(check(&early, &keys), Err(JwtError::NotYetValid));
}

#[test]
fn wrong_issuer_and_wrong_audience_are_refused() {
    let key = rsa(1);
    let keys = jwks(&[key.jwk("k")]);
    let other = key.sign("k", &with(claims(), "iss", json!("https://evil.example")));
    assert_eq!(check(&other, &keys), Err(JwtError::UnknownIssuer));
    let aud = key.sign("k", &with(claims(), "aud", json!(["billing", "web"])));
    assert_eq!(check(&aud, &keys), Err(JwtError::WrongAudience));
    let listed = key.sign("k", &with(claims(), "aud", json!(["billing", "shop"])));
    assert!(check(&listed, &keys).is_ok());
    // No `audiences` in the rule: any audience.
    assert!(validate(&aud, ISS, &[], &keys, now()).is_ok());
}

#[test]
fn altered_payload_fails_the_signature() {
    let key = rsa(1);
    let token = key.sign("k", &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
    let altered = parts.join(".");
    assert_eq!(
        check(&altered, &jwks(&[key.jwk("k")])),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn a_key_of_another_issuer_does_not_verify() {
    let token = rsa(2).sign("k", &claims());
    assert_eq!(
        check(&token, &jwks(&[rsa(1).jwk("k")])),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let header = b64(br#"{"alg":"none","kid":"k"}"#);
    let payload = b64(claims().to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.x"),
    ] {
        assert_eq!(
            check(&token, &jwks(&[rsa(1).jwk("k")])),
            Err(JwtError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic key confusion: an HMAC whose secret is the issuer's
    // public key, which anyone has.
    let key = rsa(1);
    let jwk = key.jwk("k");
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"k"}"#),
        b64(claims().to_string().as_bytes())
    );
    for secret in [jwk["n"].as_str().unwrap_or_default().as_bytes().to_vec(), {
        let Signer::Rsa(k) = &key else { unreachable!() };
        k.public().as_ref().to_vec()
    }] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", b64(mac.as_ref()));
        assert_eq!(
            check(&token, &jwks(std::slice::from_ref(&jwk))),
            Err(JwtError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn crit_headers_and_oversize_tokens_are_refused() {
    let key = rsa(1);
    let keys = jwks(&[key.jwk("k")]);
    let crit = key.sign_with(
        &json!({"alg": "RS256", "kid": "k", "crit": ["exp"], "exp": 1}),
        &claims(),
    );
    assert_eq!(check(&crit, &keys), Err(JwtError::UnsupportedCrit));
    let big = key.sign(
        "k",
        &with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES))),
    );
    assert_eq!(check(&big, &keys), Err(JwtError::TooLarge));
}

#[test]
fn a_key_with_another_alg_or_curve_is_not_used() {
    let key = rsa(1);
    let mut jwk = key.jwk("k");
    jwk["alg"] = json!("RS512");
    assert_eq!(
        check(&key.sign("k", &claims()), &jwks(&[jwk])),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn unknown_kid_is_reported_as_such() {
    let key = rsa(1);
    let token = key.sign("new", &claims());
    assert_eq!(
        check(&token, &jwks(&[key.jwk("old")])),
        Err(JwtError::UnknownKid)
    );
}

#[test]
fn garbage_never_panics() {
    let keys = jwks(&[rsa(1).jwk("k")]);
    for token in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b.c.d",
        "e30.e30.",
        "W10.e30.x",
        "😀.😀.😀",
    ] {
        assert!(check(token, &keys).is_err(), "{token:?}");
    }
}

// --- Policies: RequestAuthentication and the request.auth attributes ---

const FILE: &str = "policies.yaml";

pub(crate) fn load(yaml: &str) -> Result<PolicySet, crate::LoadErrors> {
    let sources = [(PathBuf::from(FILE), yaml.to_owned())];
    PolicySet::from_sources(&sources, Settings::default())
}

fn inline_jwks(keys: &[Value]) -> String {
    serde_json::to_string(&json!({ "keys": keys })).expect("json")
}

pub(crate) fn request_authn(rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  jwtRules:
  - {rule}
"
    )
}

pub(crate) fn allow(rule: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  rules:
  - {rule}
"
    )
}

pub(crate) fn rule_with(key: &Signer, extra: &str) -> String {
    format!(
        "{{issuer: '{ISS}', audiences: [shop], jwks: '{}'{extra}}}",
        inline_jwks(&[key.jwk("k")])
    )
}

/// A request to `shop/cart:8080` with these headers and query.
struct Call<'a> {
    headers: Vec<(&'a str, String)>,
    query: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// A request whose only token place is its query.
    fn in_query(query: &'a str) -> Self {
        Call {
            headers: vec![],
            query: Some(query),
        }
    }

    fn bearer(token: &str) -> Self {
        Call {
            headers: vec![("authorization", format!("Bearer {token}"))],
            query: None,
        }
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
            map.append(name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn authenticate(&self, set: &PolicySet, keys: &dyn KeySource) -> Authentication {
        let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
        let dest = dest(&labels);
        set.authenticate(&dest, &self.header_map(), self.query, keys, now())
    }

    fn decide(&self, set: &PolicySet) -> Result<Decision, JwtError> {
        let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
        let authn = self.authenticate(set, &NoKeys);
        let auth = authn.result?;
        let conn = Connection {
            source: Source {
                principal: None,
                ip: None,
            },
            destination: dest(&labels),
        };
        let headers = self.header_map();
        let req = Request {
            method: "GET",
            path: "/",
            host: "cart",
            headers: &headers,
            auth: auth.as_ref(),
        };
        Ok(set.evaluate_request(&conn, &req))
    }
}

fn dest(labels: &BTreeMap<String, String>) -> Destination<'_> {
    Destination {
        namespace: "shop",
        name: "cart",
        labels,
        port: 8080,
    }
}

#[test]
fn request_principals_allow_a_valid_token_and_not_an_anonymous_call() {
    let key = rsa(1);
    let yaml = request_authn(&rule_with(&key, ""))
        + &allow("from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]");
    let set = load(&yaml).expect("loads");
    let token = key.sign("k", &claims());
    assert!(Call::bearer(&token).decide(&set).expect("valid").allow);
    let anonymous = Call {
        headers: vec![],
        query: None,
    };
    assert!(!anonymous.decide(&set).expect("no token passes authn").allow);
    let expired = key.sign("k", &with(claims(), "exp", json!(NOW - 3600)));
    assert_eq!(Call::bearer(&expired).decide(&set), Err(JwtError::Expired));
}

#[test]
fn request_auth_policies_make_the_port_an_http_port() {
    let key = rsa(1);
    let yaml = request_authn(&rule_with(&key, ""))
        + &allow("from: [{source: {requestPrincipals: ['*']}}]");
    let set = load(&yaml).expect("loads");
    let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
    let conn = Connection {
        source: Source {
            principal: None,
            ip: None,
        },
        destination: dest(&labels),
    };
    assert_eq!(set.evaluate_connection(&conn), L4Decision::NeedsHttp);
}

#[test]
fn a_request_authentication_makes_an_l4_allowed_connection_speak_http() {
    // An ALLOW that holds at connection time would relay the bytes raw:
    // tokens unchecked, client-set claim headers untouched. A workload a
    // RequestAuthentication selects has every request read instead.
    let key = rsa(1);
    let yaml = request_authn(&rule_with(
        &key,
        ", outputClaimToHeaders: [{header: x-user, claim: sub}]",
    )) + &allow("to: [{operation: {ports: ['8080']}}]");
    let set = load(&yaml).expect("loads");
    let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
    let conn = Connection {
        source: Source {
            principal: None,
            ip: None,
        },
        destination: dest(&labels),
    };
    assert_eq!(set.evaluate_connection(&conn), L4Decision::NeedsHttp);
    // Without the RequestAuthentication the same ALLOW decides at once.
    let plain = load(&allow("to: [{operation: {ports: ['8080']}}]")).expect("loads");
    assert!(matches!(
        plain.evaluate_connection(&conn),
        L4Decision::Decided(Decision { allow: true, .. })
    ));
}

#[test]
fn not_request_principals_star_holds_only_without_a_token() {
    let key = rsa(1);
    let deny = allow("from: [{source: {notRequestPrincipals: ['*']}}]")
        .replace("  rules:", "  action: DENY\n  rules:");
    let yaml = request_authn(&rule_with(&key, "")) + &deny + &allow("{}").replace("users", "all");
    let set = load(&yaml).expect("loads");
    let anonymous = Call {
        headers: vec![],
        query: None,
    };
    assert!(!anonymous.decide(&set).expect("no token").allow);
    let token = key.sign("k", &claims());
    assert!(Call::bearer(&token).decide(&set).expect("valid").allow);
}

#[test]
fn when_keys_match_claims_audiences_and_presenter() {
    let key = rsa(1);
    let cases = [
        (
            "{key: 'request.auth.claims[groups]', values: [admin]}",
            true,
        ),
        ("{key: 'request.auth.claims[groups]', values: [ops]}", false),
        (
            "{key: 'request.auth.claims[org][team]', values: ['pay*']}",
            true,
        ),
        (
            "{key: 'request.auth.claims[org][team]', notValues: [payments]}",
            false,
        ),
        (
            "{key: 'request.auth.claims[missing]', values: ['*']}",
            false,
        ),
        ("{key: request.auth.audiences, values: [shop]}", true),
        ("{key: request.auth.presenter, values: [web]}", true),
        ("{key: request.auth.principal, values: ['*/alice']}", true),
        ("{key: request.auth.principal, values: ['*/bob']}", false),
    ];
    let token = key.sign("k", &claims());
    for (condition, allowed) in cases {
        let yaml = request_authn(&rule_with(&key, "")) + &allow(&format!("when: [{condition}]"));
        let set = load(&yaml).expect(condition);
        let d = Call::bearer(&token).decide(&set).expect("valid");
        assert_eq!(d.allow, allowed, "{condition}");
    }
}

#[test]
fn token_in_a_query_parameter_is_found_and_removed() {
    let key = rsa(1);
    let set = load(&request_authn(&rule_with(&key, ", fromParams: [jwt]"))).expect("loads");
    let token = key.sign("k", &claims());
    let query = format!("a=1&jwt={token}&b=2");
    let call = Call::in_query(&query);
    let authn = call.authenticate(&set, &NoKeys);
    assert_eq!(authn.principal(), Some("https://issuer.example/alice"));
    let mut headers = HeaderMap::new();
    assert_eq!(
        authn.rewrite(&mut headers, Some(&query)).as_deref(),
        Some("a=1&b=2")
    );
    // The default `Authorization: Bearer` is not a location of this rule.
    let header = Call::bearer(&token).authenticate(&set, &NoKeys);
    assert_eq!(header.result, Ok(None));
}

#[test]
fn a_percent_encoded_parameter_name_is_the_same_parameter() {
    let key = rsa(1);
    let set = load(&request_authn(&rule_with(
        &key,
        ", fromParams: [access_token]",
    )))
    .expect("loads");
    let token = key.sign("k", &claims());
    // The application decodes `access%5Ftoken` to `access_token`: the
    // token is checked and removed as if it were spelled plainly.
    let query = format!("a=1&access%5Ftoken={token}");
    let call = Call::in_query(&query);
    let authn = call.authenticate(&set, &NoKeys);
    assert_eq!(authn.principal(), Some("https://issuer.example/alice"));
    let mut headers = HeaderMap::new();
    assert_eq!(
        authn.rewrite(&mut headers, Some(&query)).as_deref(),
        Some("a=1")
    );
    // A forged one under an encoded name is refused, not passed along.
    let forged = format!("access%5ftoken={}x", &token[..token.len() - 1]);
    let call = Call::in_query(&forged);
    assert!(call.authenticate(&set, &NoKeys).result.is_err());
}

#[test]
fn a_header_token_that_is_not_utf8_is_refused_not_ignored() {
    let key = rsa(1);
    let set = load(&request_authn(&rule_with(&key, ""))).expect("loads");
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_bytes(b"Bearer eyJ\xff.e30.sig")
        .expect("obs-text is a valid header value");
    headers.insert(http::header::AUTHORIZATION, value);
    let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
    let authn = set.authenticate(&dest(&labels), &headers, None, &NoKeys, now());
    assert_eq!(authn.result, Err(JwtError::Malformed));
}

#[test]
fn token_is_removed_unless_forwarded_and_claims_become_headers() {
    let key = rsa(1);
    let outputs = ", outputClaimToHeaders: [{header: x-user, claim: sub}, \
                   {header: x-team, claim: org.team}, {header: x-evil, claim: evil}, \
                   {header: x-big, claim: big}]";
    let evil = with(claims(), "evil", json!("a\r\nx-admin: 1"));
    let big = "b".repeat(MAX_CLAIM_HEADER_BYTES + 1);
    let token = key.sign("k", &with(evil, "big", json!(big)));
    for (forward, kept) in [("", false), (", forwardOriginalToken: true", true)] {
        let rule = rule_with(&key, &format!("{outputs}{forward}"));
        let set = load(&request_authn(&rule)).expect("loads");
        let mut call = Call::bearer(&token);
        call.headers.push(("x-user", "forged".to_owned()));
        call.headers.push(("x-evil", "forged".to_owned()));
        let authn = call.authenticate(&set, &NoKeys);
        let mut headers = call.header_map();
        assert_eq!(authn.rewrite(&mut headers, None), None);
        assert_eq!(headers.contains_key("authorization"), kept);
        assert_eq!(headers["x-user"], "alice");
        assert_eq!(headers["x-team"], "payments");
        // A value with CR/LF is not set, and the client's copy is gone;
        // nor is one longer than the cap.
        assert!(!headers.contains_key("x-evil"));
        assert!(!headers.contains_key("x-big"));
    }
}

#[test]
fn only_the_accepting_rules_claims_become_headers() {
    // Two issuers on the same workload; only the other one maps `email`.
    let (partner, login) = (rsa(1), rsa(2));
    let other = "https://login.example";
    let login_rule = format!(
        "{{issuer: '{other}', jwks: '{}', outputClaimToHeaders: [{{header: x-email, claim: email}}]}}",
        inline_jwks(&[login.jwk("k")])
    );
    let yaml = request_authn(&format!("{}\n  - {login_rule}", rule_with(&partner, "")));
    let set = load(&yaml).expect("loads");
    let token = partner.sign("k", &with(claims(), "email", json!("ceo@example.com")));
    let mut call = Call::bearer(&token);
    call.headers
        .push(("x-email", "forged@example.com".to_owned()));
    let authn = call.authenticate(&set, &NoKeys);
    assert!(authn.principal().is_some(), "{:?}", authn.result);
    let mut headers = call.header_map();
    authn.rewrite(&mut headers, None);
    // Neither the partner's claim nor the client's copy reaches the pod.
    assert!(!headers.contains_key("x-email"), "{headers:?}");
    // The login issuer's own token does fill it.
    let mut call = Call::bearer(&login.sign(
        "k",
        &with(
            with(claims(), "iss", json!(other)),
            "email",
            json!("bob@example.com"),
        ),
    ));
    call.headers
        .push(("x-email", "forged@example.com".to_owned()));
    let authn = call.authenticate(&set, &NoKeys);
    let mut headers = call.header_map();
    authn.rewrite(&mut headers, None);
    assert_eq!(headers["x-email"], "bob@example.com");
}

#[test]
fn the_accepting_rule_decides_whether_the_token_is_forwarded() {
    // Both rules read `Authorization`; only the accepting one forwards.
    let (first, second) = (rsa(1), rsa(2));
    let other = "https://other.example";
    let forwarding = format!(
        "{{issuer: '{other}', jwks: '{}', forwardOriginalToken: true}}",
        inline_jwks(&[second.jwk("k")])
    );
    let yaml = request_authn(&format!("{}\n  - {forwarding}", rule_with(&first, "")));
    let set = load(&yaml).expect("loads");
    let call = Call::bearer(&second.sign("k", &with(claims(), "iss", json!(other))));
    let authn = call.authenticate(&set, &NoKeys);
    assert!(authn.principal().is_some(), "{:?}", authn.result);
    let mut headers = call.header_map();
    authn.rewrite(&mut headers, None);
    assert!(headers.contains_key("authorization"));
    let call = Call::bearer(&first.sign("k", &claims()));
    let authn = call.authenticate(&set, &NoKeys);
    let mut headers = call.header_map();
    authn.rewrite(&mut headers, None);
    assert!(!headers.contains_key("authorization"));
}

#[test]
fn jwks_uri_keys_come_from_the_key_source() {
    struct Fetched(Option<Arc<JwkSet>>, Mutex<Vec<String>>);
    impl KeySource for Fetched {
        fn keys(&self, _: &str) -> Option<Arc<JwkSet>> {
            self.0.clone()
        }
        fn unknown_kid(&self, uri: &str) {
            self.1.lock().expect("lock").push(uri.to_owned());
        }
    }
    let key = rsa(1);
    let uri = "https://keys.example/jwks.json";
    let set = load(&request_authn(&format!(
        "{{issuer: '{ISS}', jwksUri: '{uri}'}}"
    )))
    .expect("loads");
    assert_eq!(set.jwks_uris().into_iter().collect::<Vec<_>>(), [uri]);
    let call = Call::bearer(&key.sign("k", &claims()));
    // Before the first fetch, a token is refused, never let through.
    let none = Fetched(None, Mutex::default());
    assert_eq!(
        call.authenticate(&set, &none).result,
        Err(JwtError::KeysUnavailable)
    );
    let stale = Fetched(Some(Arc::new(jwks(&[key.jwk("old")]))), Mutex::default());
    assert_eq!(
        call.authenticate(&set, &stale).result,
        Err(JwtError::UnknownKid)
    );
    assert_eq!(*stale.1.lock().expect("lock"), [uri]);
    let fresh = Fetched(Some(Arc::new(jwks(&[key.jwk("k")]))), Mutex::default());
    assert!(call.authenticate(&set, &fresh).principal().is_some());
}

#[test]
fn two_different_tokens_are_refused_and_unknown_issuers_too() {
    let key = rsa(1);
    let set = load(&request_authn(&rule_with(&key, ""))).expect("loads");
    let (a, b) = (
        key.sign("k", &claims()),
        key.sign("k", &with(claims(), "sub", json!("bob"))),
    );
    let query = format!("access_token={b}");
    let call = Call {
        query: Some(&query),
        ..Call::bearer(&a)
    };
    assert_eq!(
        call.authenticate(&set, &NoKeys).result,
        Err(JwtError::MultipleTokens)
    );
    let other = key.sign("k", &with(claims(), "iss", json!("https://other.example")));
    assert_eq!(
        Call::bearer(&other).authenticate(&set, &NoKeys).result,
        Err(JwtError::UnknownIssuer)
    );
    // Another scheme in Authorization is not a token.
    let basic = Call {
        headers: vec![("authorization", "Basic YTpi".to_owned())],
        query: None,
    };
    assert_eq!(basic.authenticate(&set, &NoKeys).result, Ok(None));
}

#[test]
fn unselected_workloads_are_not_authenticated() {
    let key = rsa(1);
    let set = load(&request_authn(&rule_with(&key, ""))).expect("loads");
    let labels = BTreeMap::from([("app".to_owned(), "other".to_owned())]);
    let call = Call::bearer("garbage");
    let authn = set.authenticate(&dest(&labels), &call.header_map(), None, &NoKeys, now());
    assert!(!authn.applies);
    assert_eq!(authn.result, Ok(None));
}

#[test]
fn bad_request_authentications_are_refused_at_their_line() {
    let key = rsa(1);
    let oct = inline_jwks(&[json!({"kty": "oct", "k": "c2VjcmV0"})]);
    let cases: [(String, &[&str]); 6] = [
        (
            request_authn(&format!("{{issuer: x, jwks: '{oct}'}}")),
            &["jwtRules[0].jwks", "symmetric"],
        ),
        (
            request_authn("{issuer: x, jwksUri: 'http://keys.example/jwks'}"),
            &["jwtRules[0].jwksUri", "must be https"],
        ),
        (
            request_authn(&rule_with(&key, ", fromCookies: [session]")),
            &["jwtRules[0].fromCookies", "does not support"],
        ),
        (
            request_authn("{issuer: x}"),
            &["jwtRules[0].jwks", "jwksUri is required"],
        ),
        (
            request_authn(&rule_with(
                &key,
                ", outputClaimToHeaders: [{header: host, claim: sub}]",
            )),
            &["outputClaimToHeaders[0].header", "cannot be set"],
        ),
        (
            request_authn("{jwksUri: 'https://k.example/j'}"),
            &["jwtRules[0].issuer", "is required"],
        ),
    ];
    let reserved = [
        "x-forwarded-for",
        "Proxy-Authorization",
        "forwarded",
        "content-type",
    ];
    let cases = cases.into_iter().chain(reserved.iter().map(|header| {
        let outputs = format!(", outputClaimToHeaders: [{{header: {header}, claim: sub}}]");
        let wanted: &[&str] = &["outputClaimToHeaders[0].header", "cannot be set"];
        (request_authn(&rule_with(&key, &outputs)), wanted)
    }));
    for (yaml, wanted) in cases {
        let err = load(&yaml).expect_err(&yaml).to_string();
        assert!(err.starts_with("policies.yaml:"), "{err}");
        for w in wanted {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
    }
    // Loopback keys may be fetched over plain http.
    assert!(load(&request_authn(
        "{issuer: x, jwksUri: 'http://127.0.0.1:9/j'}"
    ))
    .is_ok());
}

#[test]
fn metric_labels_are_distinct() {
    let labels: std::collections::BTreeSet<&str> =
        JwtError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(labels.len(), JwtError::ALL.len());
    assert!(labels.contains("bad_signature") && labels.contains("unknown_issuer"));
}
