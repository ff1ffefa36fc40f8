//! The gate's JWT step: 401 with a challenge for a bad token, the token
//! removed and claims set for a good one, the principal in the audit log
//! and never the token, and every check counted.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};

use super::super::{
    audit::{AuditSink, Auditor},
    Admission, Authz, Lease, RequestGate, Subject,
};
use crate::{
    http::{Authorizer, Verdict},
    telemetry::{Discard, Observer, Telemetry},
    trace::{RequestSpan, SpanRecord, SpanSink, Tracer, Value as SpanValue},
};
use nodeward_policy::{PolicySet, Settings};

const ISS: &str = "https://issuer.example";

struct Signer(EcdsaKeyPair);

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pk8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
        Self(EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref(), &rng).expect("key"))
    }

    fn jwks(&self) -> String {
        let point = self.0.public_key().as_ref();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": b64(&point[1..33]), "y": b64(&point[33..])}]})
        .to_string()
    }

    fn sign(&self, claims: &Value) -> String {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let header = json!({"alg": "ES256", "kid": "k"}).to_string();
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .0
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Counts `jwt_validation` calls.
#[derive(Default)]
struct Counted(Mutex<Vec<String>>);

impl Telemetry for Counted {
    fn connection(
        &self,
        l: &crate::telemetry::ConnLabels<'_>,
    ) -> crate::telemetry::ConnectionSeries {
        Discard.connection(l)
    }
    fn http_request(&self, _: crate::telemetry::Reporter, _: &str, _: &str, _: u16) {}
    fn refused(&self, _: &str) {}
    fn connect_failed(&self, _: &str) {}
    fn active(&self, _: i64) {}
    fn pending(&self, _: i64) {}
    fn tunnel_handshake(&self, _: crate::telemetry::Side, _: f64) {}
    fn tunnel_rejected(&self, _: &str) {}
    fn tunnel_stream(&self, _: crate::telemetry::Side, _: &str) {}
    fn tunnel_stream_refused(&self, _: &str) {}
    fn tunnel_dial_queued(&self, _: f64) {}
    fn tunnel_closed(&self, _: &str) {}
    fn authz_decision(&self, _: &str, _: &str, _: &str) {}
    fn ratelimit(
        &self,
        _: &str,
        _: crate::telemetry::RateLimitOutcome,
        _: crate::telemetry::LimitKind,
    ) {
    }
    fn ratelimit_buckets(&self, _: usize) {}
    fn policy_revoked(&self) {}
    fn audit_dropped(&self, _: u64) {}
    fn jwt_validation(&self, result: &str) {
        self.0.lock().expect("lock").push(result.to_owned());
    }
}

struct Gate {
    gate: RequestGate,
    counted: Arc<Counted>,
    audit: tempfile::TempDir,
    _lease: Lease,
}

impl Gate {
    fn new(signer: &Signer) -> Self {
        let yaml = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: '{ISS}'
    jwks: '{}'
    fromHeaders: [{{name: authorization, prefix: 'Bearer '}}]
    fromParams: [token]
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  rules: [{{from: [{{source: {{requestPrincipals: ['{ISS}/*']}}}}]}}]
",
            signer.jwks()
        );
        let sources = [(PathBuf::from("policies/test.yaml"), yaml)];
        let set = PolicySet::from_sources(&sources, Settings::default()).expect("policies");
        let audit = tempfile::tempdir().expect("tempdir");
        let sink = AuditSink::File(audit.path().join("audit.log"));
        let counted = Arc::new(Counted::default());
        let observer = Arc::new(Observer::new(counted.clone()));
        let auditor = Auditor::open(&sink, Arc::new(Discard)).expect("audit");
        let authz = Arc::new(Authz::new(set, auditor, observer));
        let lease = match authz.admit(subject()) {
            Admission::Http(lease) => lease,
            _ => panic!("a requestPrincipals policy makes the port an HTTP port"),
        };
        Self {
            gate: authz.gate(&lease),
            counted,
            audit,
            _lease: lease,
        }
    }

    fn judge(
        &self,
        uri: &str,
        auth: Option<&str>,
    ) -> (
        Option<::http::Response<bytes::Bytes>>,
        ::http::request::Parts,
    ) {
        let mut req = ::http::Request::get(uri).header("host", "backend");
        if let Some(token) = auth {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req = req.header("x-user", "forged");
        let (mut parts, ()) = req.body(()).expect("request").into_parts();
        match self.gate.authorize(&mut parts) {
            Verdict::Forward => (None, parts),
            Verdict::Respond(r) => (Some(r), parts),
        }
    }

    fn results(&self) -> Vec<String> {
        self.counted.0.lock().expect("lock").clone()
    }

    fn audit_log(&self) -> String {
        self.audit_log_with(2)
    }

    /// The audit log once it has `lines` lines (or after 2 s).
    fn audit_log_with(&self, lines: usize) -> String {
        // The auditor writes from its own thread; give it a moment.
        let path = self.audit.path().join("audit.log");
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::read_to_string(&path).unwrap_or_default()
    }
}

fn subject() -> Subject {
    Subject {
        principal: None,
        ..super::super::request_tests::subject()
    }
}

#[test]
fn a_valid_token_is_allowed_stripped_and_its_claims_set() {
    let signer = Signer::new();
    let gate = Gate::new(&signer);
    let token = signer.sign(&json!({"iss": ISS, "sub": "alice", "exp": now() + 600}));
    let (refused, parts) = gate.judge("/cart", Some(&token));
    assert!(refused.is_none(), "{refused:?}");
    assert!(!parts.headers.contains_key("authorization"));
    assert_eq!(parts.headers["x-user"], "alice");
    assert_eq!(gate.results(), ["ok"]);
    // In a query parameter too, which is removed before the pod sees it.
    let (refused, parts) = gate.judge(&format!("/cart?a=1&token={token}"), None);
    assert!(refused.is_none(), "{refused:?}");
    assert_eq!(
        parts.uri.path_and_query().map(|p| p.as_str()),
        Some("/cart?a=1")
    );
    let log = gate.audit_log();
    assert!(
        log.contains(r#""request_principal":"https://issuer.example/alice""#),
        "{log}"
    );
    assert!(!log.contains(&token), "the token must never be logged");
}

#[test]
fn a_bad_token_gets_401_with_a_challenge_and_no_token_is_denied_by_policy() {
    let signer = Signer::new();
    let gate = Gate::new(&signer);
    let expired = signer.sign(&json!({"iss": ISS, "sub": "alice", "exp": now() - 3600}));
    let (refused, _) = gate.judge("/", Some(&expired));
    let refused = refused.expect("refused");
    assert_eq!(refused.status(), ::http::StatusCode::UNAUTHORIZED);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .expect("ascii");
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    let forged = Signer::new().sign(&json!({"iss": ISS, "sub": "alice"}));
    let (refused, _) = gate.judge("/", Some(&forged));
    assert_eq!(
        refused.map(|r| r.status()),
        Some(::http::StatusCode::UNAUTHORIZED)
    );
    assert_eq!(gate.results(), ["expired", "bad_signature"]);
    // No token: authentication passes, the policy denies (403).
    let (refused, _) = gate.judge("/", None);
    assert_eq!(
        refused.map(|r| r.status()),
        Some(::http::StatusCode::FORBIDDEN)
    );
    assert!(!gate.audit_log().contains(&expired));
}

/// Spans as they finish.
#[derive(Default)]
struct Spans(Mutex<Vec<SpanRecord>>);

impl SpanSink for Spans {
    fn record(&self, span: SpanRecord) {
        self.0.lock().expect("lock").push(span);
    }
}

#[test]
fn a_refused_token_is_traced_with_the_decision_and_the_reason() {
    let signer = Signer::new();
    let gate = Gate::new(&signer);
    let sink = Arc::new(Spans::default());
    let tracer = Arc::new(Tracer::new(sink.clone(), 1.0));
    let expired = signer.sign(&json!({"iss": ISS, "sub": "alice", "exp": now() - 3600}));
    let (mut parts, ()) = ::http::Request::get("/cart")
        .header("host", "backend")
        .header("authorization", format!("Bearer {expired}"))
        .body(())
        .expect("request")
        .into_parts();
    // As `serve` does: the span rides in the extensions while the gate judges.
    parts.extensions.insert(RequestSpan::start(&tracer, &parts));
    let Verdict::Respond(refused) = gate.gate.authorize(&mut parts) else {
        panic!("an expired token is refused");
    };
    let span = parts.extensions.remove::<RequestSpan>().expect("span");
    span.finish(refused.status());
    let span = sink.0.lock().expect("lock").pop().expect("the 401's span");
    let text = |v: &str| SpanValue::Str(std::borrow::Cow::Owned(v.to_owned()));
    assert_eq!(
        span.attribute("nodeward.authz.decision"),
        Some(&text("deny"))
    );
    assert_eq!(
        span.attribute("nodeward.jwt.result"),
        Some(&text("expired"))
    );
    assert_eq!(span.attribute("server.address"), Some(&text("backend")));
    assert_eq!(
        span.attribute("http.response.status_code"),
        Some(&SpanValue::Int(401))
    );
}

#[test]
fn a_refusal_before_authentication_never_records_the_query() {
    let signer = Signer::new();
    let gate = Gate::new(&signer);
    let token = signer.sign(&json!({"iss": ISS, "sub": "alice", "exp": now() + 600}));
    // An underscore in a header name is refused (400) before the token is
    // looked at, let alone removed from the query.
    let (mut parts, ()) = ::http::Request::get(format!("/cart?token={token}"))
        .header("host", "backend")
        .header("x_trace", "1")
        .body(())
        .expect("request")
        .into_parts();
    let Verdict::Respond(refused) = gate.gate.authorize(&mut parts) else {
        panic!("an underscore header is refused");
    };
    assert_eq!(refused.status(), ::http::StatusCode::BAD_REQUEST);
    let log = gate.audit_log_with(1);
    assert!(log.contains(r#""path":"/cart""#), "{log}");
    assert!(
        !log.contains(&token),
        "the token must never be logged: {log}"
    );
}

#[test]
fn an_http2_refusal_records_the_host_from_the_authority() {
    let signer = Signer::new();
    let gate = Gate::new(&signer);
    let expired = signer.sign(&json!({"iss": ISS, "sub": "alice", "exp": now() - 3600}));
    // HTTP/2 carries the host as :authority, in the URI, with no Host header.
    let (mut parts, ()) = ::http::Request::get("http://backend.shop:8080/cart")
        .header("authorization", format!("Bearer {expired}"))
        .body(())
        .expect("request")
        .into_parts();
    let Verdict::Respond(refused) = gate.gate.authorize(&mut parts) else {
        panic!("an expired token is refused");
    };
    assert_eq!(refused.status(), ::http::StatusCode::UNAUTHORIZED);
    let log = gate.audit_log_with(1);
    assert!(log.contains(r#""host":"backend.shop:8080""#), "{log}");
}
