//! The per-request gate on hostile request heads: hosts and header names
//! are judged in the one form the pod receives, or refused with 400.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use ::http::{header::HOST, Request, StatusCode, Version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::{
    audit::{AuditSink, Auditor},
    Admission, Authz, Lease, RequestGate, Subject,
};
use crate::{
    drain::DrainControl,
    http::{Authorizer, HeadersWithUnderscores, Verdict},
    telemetry::Observer,
};
use nodeward_policy::{PolicySet, Settings};
use nodeward_workloads::Workload;

const WAIT: Duration = Duration::from_secs(10);
/// Where the caller's connection went: the pod's address and port.
const DST: &str = "10.0.0.2:8080";
const ALLOW_ALL: &str = "[{}]";
const ADMIN_HOST: &str = "[{to: [{operation: {hosts: [admin.example]}}]}]";

/// A gate for one connection frontend → shop/backend (`app: backend`) at
/// [`DST`], under the AuthorizationPolicies `(name, action, rules)`.
struct Gate {
    gate: RequestGate,
    _lease: Lease,
    _audit: tempfile::TempDir,
}

impl Gate {
    fn new(policies: &[(&str, &str, &str)]) -> Self {
        Self::with(policies, HeadersWithUnderscores::Reject)
    }

    fn with(policies: &[(&str, &str, &str)], underscores: HeadersWithUnderscores) -> Self {
        let yaml: String = policies
            .iter()
            .map(|(name, action, rules)| policy(name, action, rules))
            .collect();
        let sources = [(PathBuf::from("policies/test.yaml"), yaml.clone())];
        let set = PolicySet::from_sources(&sources, Settings::default())
            .unwrap_or_else(|e| panic!("policy rejected:\n{e}\n{yaml}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = AuditSink::File(dir.path().join("audit.log"));
        let observer = Arc::new(Observer::discard());
        let auditor = Auditor::open(&sink, Arc::new(crate::telemetry::Discard)).expect("audit");
        let authz = Authz::new(set, auditor, observer).with_headers_with_underscores(underscores);
        let authz = Arc::new(authz);
        let lease = match authz.admit(subject()) {
            Admission::Http(lease) | Admission::Relay(lease) => lease,
            Admission::Denied(d) | Admission::Limited(d) => panic!("connection refused: {d:?}"),
        };
        Self {
            gate: authz.gate(&lease),
            _lease: lease,
            _audit: dir,
        }
    }

    /// The gate's verdict on `req`, and the request as it would be forwarded.
    fn judge(&self, req: Request<()>) -> (Option<StatusCode>, ::http::request::Parts) {
        let (mut parts, ()) = req.into_parts();
        let status = match self.gate.authorize(&mut parts) {
            Verdict::Forward => None,
            Verdict::Respond(response) => Some(response.status()),
        };
        (status, parts)
    }
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: backend}}}}\n  action: {action}\n  rules: {rules}\n---\n"
    )
}

/// The caller `frontend` reaching `backend` at `DST` (the JWT tests share
/// it, without the caller's identity).
pub(super) fn subject() -> Subject {
    let destination = Workload {
        name: "backend".into(),
        namespace: "shop".into(),
        service_account: "backend".into(),
        node: "node-a".into(),
        ips: vec!["10.0.0.2".parse().expect("ip")],
        labels: BTreeMap::from([("app".to_owned(), "backend".to_owned())]),
        cgroup: None,
        enrolled: true,
    };
    Subject {
        principal: Some(
            nodeward_identity::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend")
                .expect("id"),
        ),
        source_ip: Some("10.0.0.1".parse().expect("ip")),
        destination: Arc::new(destination),
        dst: DST.parse().expect("addr"),
        flow: crate::flows::Flow::none(),
    }
}

/// An HTTP/1.1 `GET /` with the given Host header values.
fn get(version: Version, hosts: &[&str]) -> Request<()> {
    let mut req = Request::get("/").version(version);
    for host in hosts {
        req = req.header(HOST, *host);
    }
    req.body(()).expect("request")
}

fn host_of(parts: &::http::request::Parts) -> Option<&str> {
    parts.headers.get(HOST).and_then(|h| h.to_str().ok())
}

#[test]
fn an_empty_host_header_is_refused_with_400() {
    let gate = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]);
    for version in [Version::HTTP_11, Version::HTTP_10] {
        let (status, _) = gate.judge(get(version, &[""]));
        assert_eq!(status, Some(StatusCode::BAD_REQUEST), "{version:?}");
    }
}

/// HTTP/1.0 allows a request without Host. A DENY on hosts cannot tell it
/// is not for the denied host, so it denies; when allowed, it is forwarded
/// with the address it reached as Host (HTTP/1.1 requires one).
#[test]
fn http10_without_host_falls_to_a_host_deny_and_is_forwarded_with_the_destination_as_host() {
    let deny = Gate::new(&[
        ("deny-admin", "DENY", ADMIN_HOST),
        ("all", "ALLOW", ALLOW_ALL),
    ]);
    let (status, _) = deny.judge(get(Version::HTTP_10, &[]));
    assert_eq!(status, Some(StatusCode::FORBIDDEN));

    let allow = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]);
    let (status, parts) = allow.judge(get(Version::HTTP_10, &[]));
    assert_eq!(status, None);
    assert_eq!(host_of(&parts), Some(DST));

    let (status, _) = allow.judge(get(Version::HTTP_11, &[]));
    assert_eq!(
        status,
        Some(StatusCode::BAD_REQUEST),
        "HTTP/1.1 needs a Host"
    );
}

/// Spellings a server may read as `admin.example` but a policy would not
/// are refused; the ones that have a normal form are judged and forwarded
/// in it.
#[test]
fn host_spellings_are_refused_or_judged_and_forwarded_in_normal_form() {
    let deny = Gate::new(&[
        ("deny-admin", "DENY", ADMIN_HOST),
        ("all", "ALLOW", ALLOW_ALL),
    ]);
    for host in [
        "admin.example..",
        "[admin.example]",
        "b,admin.example",
        "admin.example:8080:1",
        "user@admin.example",
        "127.1",
    ] {
        let (status, _) = deny.judge(get(Version::HTTP_11, &[host]));
        assert_eq!(status, Some(StatusCode::BAD_REQUEST), "{host:?}");
    }
    for host in ["ADMIN.Example.", "admin.example:8080", "admin.example:"] {
        let (status, _) = deny.judge(get(Version::HTTP_11, &[host]));
        assert_eq!(status, Some(StatusCode::FORBIDDEN), "{host:?}");
    }
    let allow = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]);
    for (sent, forwarded) in [
        ("Backend.Shop.", "backend.shop"),
        ("backend:08080", "backend:8080"),
        ("[FD00:0::1]:8080", "[fd00::1]:8080"),
    ] {
        let (status, parts) = allow.judge(get(Version::HTTP_11, &[sent]));
        assert_eq!(status, None, "{sent:?}");
        assert_eq!(host_of(&parts), Some(forwarded), "{sent:?}");
    }
}

/// HTTP/2 carries the host in `:authority`: it is normalised there, and an
/// absolute-form HTTP/1 target's authority becomes the Host.
#[test]
fn authority_forms_are_normalised_too() {
    let allow = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]);
    let h2 = Request::get("http://Backend.Shop.:8080/a")
        .version(Version::HTTP_2)
        .body(())
        .expect("request");
    let (status, parts) = allow.judge(h2);
    assert_eq!(status, None);
    assert_eq!(parts.uri.to_string(), "http://backend.shop:8080/a");
    let absolute = Request::get("http://Backend.Shop./a")
        .header(HOST, "other")
        .body(())
        .expect("request");
    let (status, parts) = allow.judge(absolute);
    assert_eq!(status, None);
    assert_eq!(parts.uri.to_string(), "/a");
    assert_eq!(host_of(&parts), Some("backend.shop"));
    // The `http` crate takes brackets around a name; the gate does not.
    let bad = Request::get("http://[admin.example]/a")
        .version(Version::HTTP_2)
        .body(())
        .expect("request");
    assert_eq!(allow.judge(bad).0, Some(StatusCode::BAD_REQUEST));
}

/// `X_Debug` would pass a DENY on `x-debug` to a pod that reads both as
/// `HTTP_X_DEBUG`: refused with 400 by default.
#[test]
fn a_header_name_with_an_underscore_is_refused_by_default() {
    let gate = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]);
    let with = |name: &str| {
        Request::get("/")
            .header(HOST, "backend")
            .header(name, "1")
            .body(())
            .expect("request")
    };
    assert_eq!(gate.judge(with("X_Debug")).0, Some(StatusCode::BAD_REQUEST));
    assert_eq!(gate.judge(with("X-Debug")).0, None);
}

/// With `headersWithUnderscores: allow` the request is forwarded as sent,
/// and a header DENY still sees the underscore spelling.
#[test]
fn allowed_underscore_headers_still_meet_a_header_deny() {
    let deny_debug = "[{when: [{key: 'request.headers[x-debug]', values: ['1']}]}]";
    let policies = [
        ("deny-debug", "DENY", deny_debug),
        ("all", "ALLOW", ALLOW_ALL),
    ];
    let gate = Gate::with(&policies, HeadersWithUnderscores::Allow);
    let with = |value: &str| {
        Request::get("/")
            .header(HOST, "backend")
            .header("x_debug", value)
            .body(())
            .expect("request")
    };
    assert_eq!(gate.judge(with("1")).0, Some(StatusCode::FORBIDDEN));
    let (status, parts) = gate.judge(with("0"));
    assert_eq!(status, None);
    assert!(parts.headers.contains_key("x_debug"));
}

/// End to end through `http::serve`: the pod gets valid HTTP/1.1 with a
/// Host for an HTTP/1.0 request that had none.
#[tokio::test]
async fn the_pod_receives_http11_with_a_host_for_an_http10_request_without_one() {
    let gate = Gate::new(&[("all", "ALLOW", ALLOW_ALL)]).gate;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (mut pod, _) = listener.accept().await.expect("accept");
    let (client, mut caller) = tokio::io::duplex(64 * 1024);
    let (_control, drain) = DrainControl::new();
    tokio::spawn(async move {
        crate::http::serve(
            client,
            upstream,
            Arc::new(gate),
            &Default::default(),
            &drain,
        )
        .await
    });

    caller
        .write_all(b"GET /x HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(WAIT, pod.read(&mut buf))
            .await
            .expect("request in time")
            .expect("read");
        assert!(n > 0, "proxy closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("get /x http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nhost: {DST}\r\n")), "{head}");
}
