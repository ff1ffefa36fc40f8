use std::{collections::BTreeMap, fs, os::unix::fs::symlink};

use ::http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const OPS_TOOL: &str = "spiffe://cluster.local/ns/ops/sa/ops-tool";
const FILE: &str = "policies/test.yaml";

/// One call to a workload: frontend → shop/backend:8080 `GET /api/items`
/// unless a case changes it.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    principal: Option<&'a str>,
    ip: Option<&'a str>,
    namespace: &'a str,
    name: &'a str,
    app: &'a str,
    port: u16,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

const GET: Call<'static> = Call {
    principal: Some(FRONTEND),
    ip: Some("10.1.0.5"),
    namespace: "shop",
    name: "backend",
    app: "backend",
    port: 8080,
    method: "GET",
    path: "/api/items",
    host: "backend.shop.svc:8080",
    headers: &[],
};
const FROM_OPS: Call<'static> = Call {
    principal: Some(OPS_TOOL),
    ..GET
};
const ANONYMOUS: Call<'static> = Call {
    principal: None,
    ..GET
};
const TO_DB: Call<'static> = Call {
    namespace: "data",
    name: "db",
    app: "db",
    port: 9000,
    ..GET
};

impl Call<'_> {
    fn with<T>(&self, f: impl FnOnce(&Connection<'_>, &Request<'_>) -> T) -> T {
        let labels = BTreeMap::from([("app".to_owned(), self.app.to_owned())]);
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            headers.append(name, HeaderValue::from_str(value).expect("header value"));
        }
        let conn = Connection {
            source: Source {
                principal: self.principal,
                ip: self.ip.map(|ip| ip.parse().expect("ip")),
            },
            destination: Destination {
                namespace: self.namespace,
                name: self.name,
                labels: &labels,
                port: self.port,
            },
        };
        let req = Request {
            method: self.method,
            path: self.path,
            host: self.host,
            headers: &headers,
            auth: None,
        };
        f(&conn, &req)
    }

    fn request(&self, set: &PolicySet) -> Decision {
        self.with(|conn, req| set.evaluate_request(conn, req))
    }

    fn connection(&self, set: &PolicySet) -> L4Decision {
        self.with(|conn, _| set.evaluate_connection(conn))
    }
}

fn load(yaml: &str) -> PolicySet {
    load_with(yaml, Settings::default())
}

fn load_with(yaml: &str, settings: Settings) -> PolicySet {
    let sources = [(PathBuf::from(FILE), yaml.to_owned())];
    PolicySet::from_sources(&sources, settings)
        .unwrap_or_else(|e| panic!("policy rejected:\n{e}\n{yaml}"))
}

fn load_err(yaml: &str) -> String {
    let sources = [(PathBuf::from(FILE), yaml.to_owned())];
    match PolicySet::from_sources(&sources, Settings::default()) {
        Ok(_) => panic!("policy accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// An `AuthorizationPolicy` in `shop` selecting `app: backend`, followed by
/// `---`; `rules` is YAML (flow style is handy).
fn policy(name: &str, action: &str, rules: &str) -> String {
    policy_in("shop", "{matchLabels: {app: backend}}", name, action, rules)
}

fn policy_in(namespace: &str, selector: &str, name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  selector: {selector}\n  action: {action}\n  rules: {rules}\n---\n"
    )
}

fn peer(namespace: &str, name: &str, selector: Option<&str>, mode: &str) -> String {
    let selector = selector.map_or(String::new(), |s| {
        format!("  selector: {{matchLabels: {{{s}}}}}\n")
    });
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n{selector}  mtls: {{mode: {mode}}}\n---\n"
    )
}

/// Does `rule` match `call` in an ALLOW policy, and in a DENY policy?
fn rule_matches(rule: &str, call: Call<'_>) -> (bool, bool) {
    let rules = format!("[{rule}]");
    let allow = load(&policy("p", "ALLOW", &rules));
    let deny = load(&(policy("p", "DENY", &rules) + &policy("all", "ALLOW", "[{}]")));
    (call.request(&allow).allow, !call.request(&deny).allow)
}

/// A rule with one `from` source, e.g. `src("principals: [a]")`.
fn src(fields: &str) -> String {
    format!("{{from: [{{source: {{{fields}}}}}]}}")
}

/// A rule with one `to` operation.
fn op(fields: &str) -> String {
    format!("{{to: [{{operation: {{{fields}}}}}]}}")
}

/// A rule with `when` conditions.
fn when(conditions: &str) -> String {
    format!("{{when: [{conditions}]}}")
}

fn decided(l4: L4Decision) -> Decision {
    match l4 {
        L4Decision::Decided(decision) => decision,
        L4Decision::NeedsHttp => panic!("expected a decision at connection time, got NeedsHttp"),
    }
}

fn refs(decision: &Decision) -> Vec<&str> {
    decision.audit.iter().map(PolicyRef::as_str).collect()
}

// ---- matching -------------------------------------------------------------

/// Each field and its negation, in ALLOW and in DENY policies.
/// Columns: rule, call, matches in ALLOW, matches in DENY.
#[test]
fn each_field_and_negation_matches() {
    const MAPPED: Call<'static> = Call {
        ip: Some("::ffff:10.1.0.5"),
        ..GET
    };
    const V6: Call<'static> = Call {
        ip: Some("fd00::5"),
        ..GET
    };
    let cases: Vec<(String, Call, bool, bool)> = vec![
        (
            src("principals: [cluster.local/ns/shop/sa/frontend]"),
            GET,
            true,
            true,
        ),
        (
            src("principals: [cluster.local/ns/shop/sa/frontend]"),
            FROM_OPS,
            false,
            false,
        ),
        (
            src("notPrincipals: [cluster.local/ns/shop/sa/frontend]"),
            GET,
            false,
            false,
        ),
        (
            src("notPrincipals: [cluster.local/ns/shop/sa/frontend]"),
            FROM_OPS,
            true,
            true,
        ),
        (src("namespaces: [shop]"), GET, true, true),
        (src("namespaces: [ops]"), GET, false, false),
        (src("notNamespaces: [shop]"), GET, false, false),
        (src("notNamespaces: [ops]"), GET, true, true),
        (src("ipBlocks: [10.1.0.0/16]"), GET, true, true),
        (src("ipBlocks: [10.1.0.5]"), GET, true, true),
        (src("ipBlocks: [10.2.0.0/16]"), GET, false, false),
        (src("ipBlocks: [10.1.0.0/16]"), MAPPED, true, true),
        (src("ipBlocks: ['fd00::/64']"), V6, true, true),
        (src("ipBlocks: ['fd00::/64']"), GET, false, false),
        (src("notIpBlocks: [10.1.0.0/16]"), GET, false, false),
        (src("notIpBlocks: [10.2.0.0/16]"), GET, true, true),
        (op("ports: ['8080']"), GET, true, true),
        (op("ports: [9090]"), GET, false, false),
        (op("notPorts: ['8080']"), GET, false, false),
        (op("notPorts: [9090]"), GET, true, true),
        (op("methods: [GET]"), GET, true, true),
        (op("methods: [POST]"), GET, false, false),
        (op("notMethods: [POST]"), GET, true, true),
        (op("notMethods: [GET]"), GET, false, false),
        (op("paths: [/api/items]"), GET, true, true),
        (op("paths: [/api/other]"), GET, false, false),
        (op("notPaths: [/admin]"), GET, true, true),
        (op("notPaths: [/api/items]"), GET, false, false),
        (op("hosts: [backend.shop.svc]"), GET, true, true),
        (op("hosts: [db.data.svc]"), GET, false, false),
        (op("notHosts: [db.data.svc]"), GET, true, true),
        (op("notHosts: [backend.shop.svc]"), GET, false, false),
        // Fields of one source AND; entries of `from` OR; `from` and `to` AND.
        (
            src("principals: [cluster.local/ns/shop/sa/frontend], namespaces: [ops]"),
            GET,
            false,
            false,
        ),
        (
            "{from: [{source: {namespaces: [ops]}}, {source: {namespaces: [shop]}}]}".to_owned(),
            GET,
            true,
            true,
        ),
        (
            "{to: [{operation: {ports: ['9090']}}, {operation: {methods: [GET]}}]}".to_owned(),
            GET,
            true,
            true,
        ),
        (
            "{from: [{source: {namespaces: [shop]}}], to: [{operation: {methods: [POST]}}]}"
                .to_owned(),
            GET,
            false,
            false,
        ),
    ];
    for (rule, call, in_allow, in_deny) in &cases {
        assert_eq!(
            rule_matches(rule, *call),
            (*in_allow, *in_deny),
            "{rule} for {call:?}"
        );
    }
}

/// `when` conditions, one key at a time; conditions AND.
#[test]
fn when_conditions_match_each_key() {
    const ALICE: Call<'static> = Call {
        headers: &[("X-User", "alice")],
        ..GET
    };
    let header = |values: &str| when(&format!("{{key: 'request.headers[x-user]', {values}}}"));
    let cases: Vec<(String, Call, bool)> =
        vec![
        (header("values: [alice]"), ALICE, true),
        (header("values: [Alice]"), ALICE, false),
        (header("values: ['ali*']"), ALICE, true),
        (header("values: ['*']"), ALICE, true),
        (header("values: ['*']"), GET, false),
        (header("notValues: [bob]"), ALICE, true),
        (header("notValues: [alice]"), ALICE, false),
        (header("notValues: [alice]"), GET, true),
        (
            when("{key: 'request.headers[X-USER]', values: [alice]}"),
            ALICE,
            true,
        ),
        (when("{key: source.ip, values: [10.1.0.0/16]}"), GET, true),
        (when("{key: source.ip, notValues: [10.1.0.0/16]}"), GET, false),
        (when("{key: source.namespace, values: [shop]}"), GET, true),
        (when("{key: source.namespace, values: ['sh*']}"), GET, true),
        (when("{key: source.namespace, notValues: [shop]}"), GET, false),
        (when("{key: source.principal, values: ['*/sa/frontend']}"), GET, true),
        (when("{key: source.principal, values: ['*/sa/backend']}"), GET, false),
        (when("{key: destination.port, values: ['8080']}"), GET, true),
        (when("{key: destination.port, notValues: [8080]}"), GET, false),
        (
            when("{key: destination.port, values: ['8080'], notValues: ['8080']}"),
            GET,
            false,
        ),
        (
            when("{key: source.namespace, values: [shop]}, {key: destination.port, values: ['1']}"),
            GET,
            false,
        ),
    ];
    for (rule, call, expected) in &cases {
        assert_eq!(
            rule_matches(rule, *call),
            (*expected, *expected),
            "{rule} for {call:?}"
        );
    }
}

/// Exact, `prefix*`, `*suffix` and `*`, with and without case folding.
#[test]
fn match_forms() {
    let cases: &[(&str, &str, bool, bool)] = &[
        ("/api", "/api", false, true),
        ("/api", "/api/", false, false),
        ("/api", "/API", false, false),
        ("/api", "/API", true, true),
        ("/api/*", "/api/x", false, true),
        ("/api/*", "/api/", false, true),
        ("/api/*", "/api", false, false),
        ("/API/*", "/api/x", true, true),
        ("*.json", "/a/b.json", false, true),
        ("*.json", "/a/b.JSON", false, false),
        ("*.json", "/a/b.JSON", true, true),
        ("*.json", ".json", false, true),
        ("*", "x", false, true),
        ("*", "", false, false),
    ];
    for (pattern, value, fold, expected) in cases {
        let parsed = pattern::Pattern::parse(pattern).expect("pattern");
        assert_eq!(
            parsed.matches(value.as_bytes(), *fold),
            *expected,
            "{pattern} ~ {value} fold={fold}"
        );
    }
}

/// Positive path/method matchers ignore case in DENY and AUDIT, respect it
/// in ALLOW; negated ones the other way round. Each time the DENY side
/// matches more, the ALLOW side less.
#[test]
fn case_folding_falls_to_deny() {
    const UPPER: Call<'static> = Call {
        path: "/API/items",
        method: "get",
        ..GET
    };
    let cases: Vec<(String, Call, bool, bool)> = vec![
        (op("paths: [/api/items]"), UPPER, false, true),
        (op("notPaths: [/api/items]"), UPPER, false, true),
        (op("methods: [GET]"), UPPER, false, true),
        (op("notMethods: [GET]"), UPPER, false, true),
        // Hosts always ignore case.
        (op("hosts: [BACKEND.Shop.svc]"), GET, true, true),
    ];
    for (rule, call, in_allow, in_deny) in &cases {
        assert_eq!(
            rule_matches(rule, *call),
            (*in_allow, *in_deny),
            "{rule} for {call:?}"
        );
    }
}

/// The Host port is ignored unless the pattern names one, and then a Host
/// without a port is taken to name the destination port; a trailing dot is
/// ignored; a malformed Host cannot be matched and falls to deny.
#[test]
fn host_port_and_form() {
    let with_host = |host| Call { host, ..GET };
    let cases: &[(&str, Call, bool, bool)] = &[
        (
            "backend.shop.svc",
            with_host("backend.shop.svc:8080"),
            true,
            true,
        ),
        (
            "backend.shop.svc",
            with_host("backend.shop.svc"),
            true,
            true,
        ),
        (
            "backend.shop.svc",
            with_host("backend.shop.svc."),
            true,
            true,
        ),
        (
            "backend.shop.svc:8080",
            with_host("backend.shop.svc:8080"),
            true,
            true,
        ),
        (
            "backend.shop.svc:8080",
            with_host("backend.shop.svc:9090"),
            false,
            false,
        ),
        // A Host without a port reached the destination port.
        (
            "backend.shop.svc:8080",
            with_host("backend.shop.svc"),
            true,
            true,
        ),
        (
            "backend.shop.svc:9090",
            with_host("backend.shop.svc"),
            false,
            false,
        ),
        (
            "backend.shop.svc:9090",
            Call {
                host: "backend.shop.svc",
                port: 9090,
                ..GET
            },
            true,
            true,
        ),
        ("'[fd00::1]:8080'", with_host("[fd00::1]"), true, true),
        // A port in the Host is what the client asked for, and wins.
        (
            "backend.shop.svc:9090",
            Call {
                host: "backend.shop.svc:8080",
                port: 9090,
                ..GET
            },
            false,
            false,
        ),
        (
            "'*.shop.svc'",
            with_host("backend.shop.svc:8080"),
            true,
            true,
        ),
        ("'backend.*'", with_host("Backend.shop.svc"), true, true),
        ("'[fd00::1]'", with_host("[fd00::1]:8080"), true, true),
        // No host at all (HTTP/1.0): unknowable, like a malformed one.
        ("'*'", with_host(""), false, true),
        (
            "backend.shop.svc",
            with_host("backend.shop.svc:http"),
            false,
            true,
        ),
        ("backend.shop.svc", with_host("fd00::1"), false, true),
    ];
    for (host, call, in_allow, in_deny) in cases {
        let rule = format!("{{to: [{{operation: {{hosts: [{host}]}}}}]}}");
        assert_eq!(
            rule_matches(&rule, *call),
            (*in_allow, *in_deny),
            "{host} for {:?}",
            call.host
        );
    }
}

/// A request without a Host (HTTP/1.0), or with an empty one, cannot be
/// matched against hosts: a DENY on hosts denies it, and neither `hosts`
/// nor `notHosts` in an ALLOW admits it.
#[test]
fn a_request_without_a_host_falls_to_deny_on_hosts_rules() {
    let no_host = Call { host: "", ..GET };
    for rule in [
        op("hosts: [admin.example]"),
        op("notHosts: [admin.example]"),
    ] {
        assert_eq!(rule_matches(&rule, no_host), (false, true), "{rule}");
    }
}

/// Host spellings a server may read as `admin.example` (or as something
/// the policy cannot name) are not valid hosts: they fall to deny.
#[test]
fn host_spellings_that_are_not_valid_hosts_fall_to_deny() {
    let rule = op("hosts: [admin.example]");
    for host in [
        "admin.example..",
        "[admin.example]",
        "b,admin.example",
        ".admin.example",
        "admin.example:80:80",
        "admin.example:0",
        "admin example",
        "127.1",
    ] {
        assert_eq!(
            rule_matches(&rule, Call { host, ..GET }),
            (false, true),
            "{host:?}"
        );
    }
    let canonical = [
        "ADMIN.example.",
        "admin.example:8080",
        "admin.example:08080",
        "admin.example:",
    ];
    for host in canonical {
        assert_eq!(
            rule_matches(&rule, Call { host, ..GET }),
            (true, true),
            "{host:?}"
        );
    }
}

/// An exact host pattern is kept in normal form (so `[FD00:0::1]` matches
/// the `[fd00::1]` requests are normalised to), and one that is not a valid
/// host is refused: it could never match.
#[test]
fn exact_host_patterns_are_normalised_or_refused() {
    let v6 = Call {
        host: "[fd00:0::1]:8080",
        ..GET
    };
    assert_eq!(
        rule_matches(&op("hosts: ['[FD00:0::1]']"), v6),
        (true, true)
    );
    for bad in ["admin.example..", "'[admin.example]'", "'b,admin.example'"] {
        let yaml = policy(
            "p",
            "DENY",
            &format!("[{}]", op(&format!("hosts: [{bad}]"))),
        );
        let sources = [(PathBuf::from(FILE), yaml)];
        let err = PolicySet::from_sources(&sources, Settings::default())
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("operation.hosts[0]") && err.contains("never match"),
            "{err}"
        );
    }
}

/// A repeated header whose values disagree cannot be matched: the
/// application may read either, so it falls to deny.
#[test]
fn repeated_header_with_disagreeing_values_falls_to_deny() {
    let rule = &when("{key: 'request.headers[x-user]', values: [alice]}");
    let both = Call {
        headers: &[("x-user", "alice"), ("x-user", "mallory")],
        ..GET
    };
    let twice = Call {
        headers: &[("x-user", "alice"), ("x-user", "alice")],
        ..GET
    };
    assert_eq!(rule_matches(rule, both), (false, true));
    assert_eq!(rule_matches(rule, twice), (true, true));
}

/// CGI-style servers read `x_debug` as `x-debug` (both are
/// `HTTP_X_DEBUG`): a header check sees every spelling, and two spellings
/// with disagreeing values are a repeated header that falls to deny.
#[test]
fn header_checks_see_dash_and_underscore_spellings_as_one_header() {
    let dash_rule = when("{key: 'request.headers[x-debug]', values: ['1']}");
    let underscore_rule = when("{key: 'request.headers[x_debug]', values: ['1']}");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Headers, (bool, bool))] = &[
        (&[("x-debug", "1")], (true, true)),
        (&[("x_debug", "1")], (true, true)),
        (&[("X_Debug", "1")], (true, true)),
        (&[("x-debug", "0"), ("x_debug", "1")], (false, true)),
        (
            &[("xdebug", "1"), ("x-debug-", "1"), ("x-debuh", "1")],
            (false, false),
        ),
    ];
    for rule in [&dash_rule, &underscore_rule] {
        for (headers, want) in cases {
            let call = Call { headers, ..GET };
            assert_eq!(rule_matches(rule, call), *want, "{rule} {headers:?}");
        }
    }
}

/// `hosts: [admin.example:8080]` in a DENY policy stops `Host:
/// admin.example` sent to port 8080, and in an ALLOW policy admits it; on
/// another port neither applies.
#[test]
fn host_pattern_port_matches_the_destination_port_when_host_has_none() {
    let rule = "[{to: [{operation: {hosts: ['admin.example:8080']}}]}]";
    let deny = load(&(policy("deny-admin", "DENY", rule) + &policy("all", "ALLOW", "[{}]")));
    let allow = load(&policy("allow-admin", "ALLOW", rule));
    let on = |port| Call {
        host: "admin.example",
        port,
        ..GET
    };
    let decision = on(8080).request(&deny);
    assert!(!decision.allow);
    assert_eq!(decision.reason, "DENY policy shop/deny-admin matched");
    assert!(on(9090).request(&deny).allow);
    let decision = on(8080).request(&allow);
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (true, "ALLOW policy shop/allow-admin matched")
    );
    assert!(!on(9090).request(&allow).allow);
}

// ---- decisions ------------------------------------------------------------

#[test]
fn deny_wins_over_allow() {
    let set = load(
        &(policy("allow-all", "ALLOW", "[{}]")
            + &policy(
                "deny-frontend",
                "DENY",
                "[{from: [{source: {namespaces: [shop]}}]}]",
            )),
    );
    let decision = GET.request(&set);
    assert!(!decision.allow);
    assert_eq!(
        decision.policy.as_ref().map(PolicyRef::as_str),
        Some("shop/deny-frontend")
    );
    assert_eq!(decision.action, Some(Action::Deny));
    assert_eq!(decision.reason, "DENY policy shop/deny-frontend matched");
    let decision = FROM_OPS.request(&set);
    assert!(decision.allow);
    assert_eq!(decision.reason, "ALLOW policy shop/allow-all matched");
}

#[test]
fn audit_is_reported_and_never_decides() {
    let audit = policy(
        "audit-get",
        "AUDIT",
        "[{to: [{operation: {methods: [GET]}}]}]",
    );
    for (default_policy, allowed) in [(DefaultPolicy::Deny, false), (DefaultPolicy::Allow, true)] {
        let settings = Settings {
            default_policy,
            ..Settings::default()
        };
        let set = load_with(&audit, settings);
        let decision = GET.request(&set);
        assert_eq!(decision.allow, allowed, "{default_policy}");
        assert_eq!(refs(&decision), ["shop/audit-get"]);
        assert_eq!(decision.policy, None);
        let post = Call {
            method: "POST",
            ..GET
        };
        assert!(post.request(&set).audit.is_empty());
    }
    let set = load(&(audit + &policy("deny", "DENY", "[{}]")));
    let decision = GET.request(&set);
    assert!(!decision.allow);
    assert_eq!(refs(&decision), ["shop/audit-get"]);
}

#[test]
fn defaults_decide_only_where_no_allow_policy_selects() {
    let deny_admin = policy(
        "deny-admin",
        "DENY",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    );
    let cases = [
        (
            DefaultPolicy::Deny,
            "",
            false,
            "no ALLOW policy selects shop/backend; defaultPolicy deny",
        ),
        (
            DefaultPolicy::Allow,
            "",
            true,
            "no ALLOW policy selects shop/backend; defaultPolicy allow",
        ),
        (
            DefaultPolicy::Allow,
            deny_admin.as_str(),
            true,
            "no ALLOW policy selects shop/backend; defaultPolicy allow",
        ),
    ];
    for (default_policy, yaml, allow, reason) in cases {
        let settings = Settings {
            default_policy,
            ..Settings::default()
        };
        let decision = GET.request(&load_with(yaml, settings));
        assert_eq!((decision.allow, decision.reason.as_str()), (allow, reason));
        assert_eq!((decision.policy, decision.action), (None, None));
    }
    // An ALLOW policy that selects the workload turns the default off.
    let settings = Settings {
        default_policy: DefaultPolicy::Allow,
        ..Settings::default()
    };
    let set = load_with(
        &policy(
            "only-ops",
            "ALLOW",
            "[{from: [{source: {namespaces: [ops]}}]}]",
        ),
        settings,
    );
    let decision = GET.request(&set);
    assert!(!decision.allow);
    assert_eq!(decision.reason, "no ALLOW policy for shop/backend matched");
    assert!(
        TO_DB.request(&set).allow,
        "db is not selected, so the default applies"
    );
}

/// `policy explain --to-namespace shop --to-labels app=backend` knows no
/// workload name: reasons name the destination by its labels instead of
/// reading `shop/`.
#[test]
fn a_destination_without_a_name_is_named_by_its_labels() {
    let unnamed = Call { name: "", ..GET };
    let decision = unnamed.request(&load(""));
    assert_eq!(
        decision.reason,
        "no ALLOW policy selects shop/{app=backend}; defaultPolicy deny"
    );
    let only_ops = policy(
        "only-ops",
        "ALLOW",
        &format!("[{}]", src("namespaces: [ops]")),
    );
    let decision = unnamed.request(&load(&only_ops));
    assert_eq!(
        decision.reason,
        "no ALLOW policy for shop/{app=backend} matched"
    );
    let labels = BTreeMap::from([
        ("app".to_owned(), "web".to_owned()),
        ("tier".to_owned(), "a".to_owned()),
    ]);
    let mut to = Destination {
        namespace: "shop",
        name: "",
        labels: &labels,
        port: 80,
    };
    assert_eq!(to.to_string(), "shop/{app=web,tier=a}");
    let none = BTreeMap::new();
    to.labels = &none;
    assert_eq!(to.to_string(), "shop/{}");
    to.name = "web";
    assert_eq!(to.to_string(), "shop/web");
}

#[test]
fn root_namespace_policies_apply_mesh_wide() {
    let mesh = policy_in(
        "istio-system",
        "{}",
        "mesh-ops",
        "ALLOW",
        "[{from: [{source: {namespaces: [ops]}}]}]",
    );
    let set = load(&mesh);
    let ops_to_db = Call {
        principal: Some(OPS_TOOL),
        ..TO_DB
    };
    assert!(ops_to_db.request(&set).allow);
    assert!(FROM_OPS.request(&set).allow);
    assert_eq!(
        TO_DB.request(&set).reason,
        "no ALLOW policy for data/db matched"
    );

    // With a selector: workloads with those labels, in every namespace.
    let by_label = policy_in(
        "istio-system",
        "{matchLabels: {app: db}}",
        "db-anywhere",
        "DENY",
        "[{}]",
    );
    let set = load(
        &(by_label
            + &policy_in("data", "{}", "all", "ALLOW", "[{}]")
            + &policy("all", "ALLOW", "[{}]")),
    );
    assert_eq!(
        TO_DB.request(&set).reason,
        "DENY policy istio-system/db-anywhere matched"
    );
    assert!(GET.request(&set).allow);

    // A namespace's policy without selector covers only that namespace.
    let set = load(&policy_in("shop", "{}", "shop-all", "ALLOW", "[{}]"));
    assert!(GET.request(&set).allow);
    assert!(!TO_DB.request(&set).allow);

    // The root namespace is configurable; istio-system is then ordinary.
    let settings = Settings {
        root_namespace: "mesh-root".to_owned(),
        ..Settings::default()
    };
    assert!(!TO_DB.request(&load_with(&mesh, settings.clone())).allow);
    let moved = mesh.replace("namespace: istio-system", "namespace: mesh-root");
    assert!(ops_to_db.request(&load_with(&moved, settings)).allow);
}

#[test]
fn empty_rules_match_nothing_and_an_empty_rule_matches_everything() {
    let head = "apiVersion: security.istio.io/v1\n\
                kind: AuthorizationPolicy\n\
                metadata: {name: p, namespace: shop}\n";
    let cases = [
        ("spec: {selector: {matchLabels: {app: backend}}}", false),
        (
            "spec: {selector: {matchLabels: {app: backend}}, rules: []}",
            false,
        ),
        ("spec: {}", false),
        ("", false),
        ("spec: {rules: [{}]}", true),
        ("spec: {rules: [{from: [], to: [], when: []}]}", true),
        (
            "spec: {rules: [{from: [{source: {principals: [], namespaces: [shop]}}]}]}",
            true,
        ),
        (
            "spec: {rules: [{from: [{source: {principals: [], namespaces: [ops]}}]}]}",
            false,
        ),
    ];
    for (spec, allow) in cases {
        let decision = GET.request(&load(&format!("{head}{spec}\n")));
        assert_eq!(decision.allow, allow, "{spec}");
        if !allow {
            assert_eq!(
                decision.reason, "no ALLOW policy for shop/backend matched",
                "{spec}"
            );
        }
    }
    // An empty rule in a DENY policy denies everything it selects.
    let set = load(&(policy("all", "ALLOW", "[{}]") + &policy("none", "DENY", "[{}]")));
    assert!(!FROM_OPS.request(&set).allow);
}

#[test]
fn connection_time_decides_when_http_cannot_change_the_outcome() {
    let deny_admin = policy(
        "deny-admin",
        "DENY",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    );
    let allow_frontend = policy(
        "allow-frontend",
        "ALLOW",
        "[{from: [{source: {namespaces: [shop]}}]}]",
    );
    let allow_get = policy(
        "allow-get",
        "ALLOW",
        "[{to: [{operation: {methods: [GET]}}]}]",
    );
    let l4_only = policy(
        "l4",
        "ALLOW",
        "[{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: ['8080']}}]}]",
    );
    let deny_ops = policy(
        "deny-ops",
        "DENY",
        "[{from: [{source: {namespaces: [ops]}}]}]",
    );
    let audit_admin = policy(
        "audit-admin",
        "AUDIT",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    );
    let allow = Settings {
        default_policy: DefaultPolicy::Allow,
        ..Settings::default()
    };
    // (policies, settings, call, expected: None = NeedsHttp, Some(allow))
    let cases: &[(String, Settings, Call, Option<bool>)] = &[
        (l4_only.clone(), Settings::default(), GET, Some(true)),
        (l4_only.clone(), Settings::default(), FROM_OPS, Some(false)),
        (allow_get.clone(), Settings::default(), GET, None),
        (
            deny_admin.clone() + &allow_frontend,
            Settings::default(),
            GET,
            None,
        ),
        (
            deny_admin.clone() + &allow_frontend,
            Settings::default(),
            FROM_OPS,
            Some(false),
        ),
        (deny_admin.clone(), Settings::default(), GET, Some(false)),
        (deny_admin.clone(), allow.clone(), GET, None),
        (
            deny_ops.clone() + &allow_get,
            Settings::default(),
            FROM_OPS,
            Some(false),
        ),
        // AUDIT never decides, so it does not turn a port into HTTP either.
        (
            audit_admin.clone() + &l4_only,
            Settings::default(),
            GET,
            Some(true),
        ),
        (audit_admin.clone(), allow.clone(), GET, Some(true)),
        (
            audit_admin.clone() + &l4_only,
            Settings::default(),
            FROM_OPS,
            Some(false),
        ),
        (String::new(), Settings::default(), GET, Some(false)),
        (String::new(), allow, GET, Some(true)),
    ];
    for (yaml, settings, call, expected) in cases {
        let set = load_with(yaml, settings.clone());
        let got = match call.connection(&set) {
            L4Decision::NeedsHttp => None,
            L4Decision::Decided(d) => {
                // Whatever the requests, they must agree with the L4 decision.
                for method in ["GET", "POST"] {
                    for path in ["/admin", "/api/items"] {
                        let req = Call {
                            method,
                            path,
                            ..*call
                        };
                        assert_eq!(
                            req.request(&set).allow,
                            d.allow,
                            "{method} {path} vs L4\n{yaml}"
                        );
                    }
                }
                Some(d.allow)
            }
        };
        assert_eq!(got, *expected, "{call:?}\n{yaml}");
    }
}

/// An AUDIT policy that needs HTTP attributes does not make an allowed
/// connection speak HTTP: a plain TCP client on that port would be closed,
/// and AUDIT must never change a decision. AUDIT policies that certainly
/// match are reported; those that depend on requests are not.
#[test]
fn audit_needing_http_leaves_connections_alone() {
    let on_db = |name: &str, action: &str, rules: &str| {
        policy_in("data", "{matchLabels: {app: db}}", name, action, rules)
    };
    let allow_9000 = on_db(
        "db-9000",
        "ALLOW",
        "[{to: [{operation: {ports: ['9000']}}]}]",
    );
    let audit_admin = on_db(
        "audit-admin",
        "AUDIT",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    );
    let audit_shop = on_db(
        "audit-shop",
        "AUDIT",
        "[{from: [{source: {namespaces: [shop]}}]}]",
    );
    let set = load(&(allow_9000.clone() + &audit_admin + &audit_shop));
    let decision = decided(TO_DB.connection(&set));
    assert!(decision.allow);
    assert_eq!(
        decision.policy.as_ref().map(PolicyRef::as_str),
        Some("data/db-9000")
    );
    assert_eq!(refs(&decision), ["data/audit-shop"]);
    // An ALLOW or DENY that needs HTTP still makes the connection wait.
    let deny_admin = on_db(
        "deny-admin",
        "DENY",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    );
    let set = load(&(allow_9000 + &deny_admin + &audit_admin));
    assert_eq!(TO_DB.connection(&set), L4Decision::NeedsHttp);
    let allow_get = on_db("db-get", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]");
    let set = load(&(allow_get + &audit_admin));
    assert_eq!(TO_DB.connection(&set), L4Decision::NeedsHttp);
}

/// An unknown source IP never becomes known: a rule that might match
/// counts in DENY and not in ALLOW, already at connection time.
#[test]
fn unknown_source_ip_falls_to_deny() {
    const NO_IP: Call<'static> = Call { ip: None, ..GET };
    let cases = [
        src("ipBlocks: [10.0.0.0/8]"),
        src("notIpBlocks: [10.0.0.0/8]"),
        when("{key: source.ip, values: [10.0.0.0/8]}"),
        when("{key: source.ip, notValues: [10.0.0.0/8]}"),
    ];
    for rule in &cases {
        assert_eq!(rule_matches(rule, NO_IP), (false, true), "{rule}");
        let deny =
            load(&(policy("p", "DENY", &format!("[{rule}]")) + &policy("all", "ALLOW", "[{}]")));
        assert!(!decided(NO_IP.connection(&deny)).allow, "{rule}");
        let allow = load(&policy("p", "ALLOW", &format!("[{rule}]")));
        assert!(!decided(NO_IP.connection(&allow)).allow, "{rule}");
    }
    // Rules that do not look at the IP are unaffected.
    assert_eq!(
        rule_matches(&src("namespaces: [shop]"), NO_IP),
        (true, true)
    );
}

#[test]
fn unauthenticated_callers_have_no_principal_or_namespace() {
    let cases: Vec<(String, bool)> = vec![
        (src("principals: ['*']"), false),
        (src("notPrincipals: ['*']"), true),
        (src("principals: ['cluster.local/*']"), false),
        (
            src("notPrincipals: [cluster.local/ns/shop/sa/frontend]"),
            true,
        ),
        (src("namespaces: ['*']"), false),
        (src("notNamespaces: [ops]"), true),
        (when("{key: source.principal, values: ['*']}"), false),
        (when("{key: source.namespace, notValues: [shop]}"), true),
    ];
    for (rule, matches) in &cases {
        assert_eq!(
            rule_matches(rule, ANONYMOUS),
            (*matches, *matches),
            "{rule}"
        );
    }
    // Istio's idiom for "deny plaintext" denies exactly the anonymous.
    let set = load(
        &(policy("all", "ALLOW", "[{}]")
            + &policy(
                "no-plaintext",
                "DENY",
                "[{from: [{source: {notPrincipals: ['*']}}]}]",
            )),
    );
    assert!(!decided(ANONYMOUS.connection(&set)).allow);
    assert!(decided(GET.connection(&set)).allow);
}

/// A principal that is not a SPIFFE ID is a caller bug: unknowable.
#[test]
fn malformed_principal_falls_to_deny() {
    let odd = Call {
        principal: Some("cluster.local/ns/shop/sa/frontend"),
        ..GET
    };
    assert_eq!(
        rule_matches(&src("principals: [cluster.local/ns/shop/sa/frontend]"), odd),
        (false, true)
    );
    assert_eq!(
        rule_matches(&src("notPrincipals: ['*']"), odd),
        (false, true)
    );
    // A SPIFFE ID outside /ns/<ns>/sa/<sa> has a principal but no namespace.
    let node = Call {
        principal: Some("spiffe://cluster.local/nodeward/node/n1"),
        ..GET
    };
    assert_eq!(rule_matches(&src("principals: ['*']"), node), (true, true));
    assert_eq!(
        rule_matches(&src("namespaces: ['*']"), node),
        (false, false)
    );
}

#[test]
fn deny_all_fails_closed() {
    let set = PolicySet::deny_all(Settings {
        default_policy: DefaultPolicy::Allow,
        ..Settings::default()
    });
    let decision = decided(GET.connection(&set));
    assert!(!decision.allow);
    assert_eq!(decision.reason, "no valid policy set has been loaded");
    assert!(!GET.request(&set).allow);
    assert_eq!(
        set.mtls_mode("shop", &BTreeMap::new()),
        Some(MtlsMode::Strict)
    );
    assert_eq!(
        set.summary().to_string(),
        "no valid policy set loaded: denying everything"
    );
    assert_eq!(set.policies().count(), 0);
}

#[test]
fn decision_json_shape() {
    let set = load(
        &(policy(
            "deny-admin",
            "DENY",
            "[{to: [{operation: {paths: [/admin]}}]}]",
        ) + &policy("audit", "AUDIT", "[{}]")),
    );
    let admin = Call {
        path: "/admin",
        ..GET
    };
    let expected = serde_json::json!({
        "decision": "deny",
        "policy": "shop/deny-admin",
        "action": "DENY",
        "reason": "DENY policy shop/deny-admin matched",
        "audit": ["shop/audit"],
    });
    assert_eq!(admin.request(&set).to_json(), expected);
    let expected = serde_json::json!({
        "decision": "deny",
        "policy": null,
        "action": null,
        "reason": "no ALLOW policy selects shop/backend; defaultPolicy deny",
        "audit": ["shop/audit"],
    });
    assert_eq!(GET.request(&set).to_json(), expected);
}

// ---- paths ----------------------------------------------------------------

#[test]
fn normalize_host_table() {
    use HostRejected::*;
    let ok = |name: &str, port: Option<u16>| {
        Ok(NormalizedHost {
            name: name.to_owned(),
            port,
        })
    };
    let cases: &[(&str, Result<NormalizedHost, HostRejected>)] = &[
        ("backend", ok("backend", None)),
        ("Backend.Shop.SVC.", ok("backend.shop.svc", None)),
        ("my_service:8080", ok("my_service", Some(8080))),
        ("a:", ok("a", None)),
        ("a:00080", ok("a", Some(80))),
        ("10.0.0.1:80", ok("10.0.0.1", Some(80))),
        ("10.0.0.1.", ok("10.0.0.1", None)),
        ("[FD00:0::1]", ok("[fd00::1]", None)),
        ("[::ffff:10.0.0.1]:443", ok("[::ffff:10.0.0.1]", Some(443))),
        ("x.0x7fz", ok("x.0x7fz", None)),
        ("", Err(Empty)),
        (".", Err(Empty)),
        (":80", Err(Empty)),
        ("admin.example..", Err(EmptyLabel)),
        (".admin.example", Err(EmptyLabel)),
        ("[admin.example]", Err(BadIpv6)),
        ("[fe80::1%25eth0]", Err(BadIpv6)),
        ("[fd00::1", Err(BadIpv6)),
        ("[fd00::1]x", Err(BadIpv6)),
        ("fd00::1", Err(BadCharacter)),
        ("b,admin.example", Err(BadCharacter)),
        ("a b", Err(BadCharacter)),
        ("caf\u{e9}", Err(BadCharacter)),
        ("a%2eb", Err(BadCharacter)),
        ("u@a", Err(BadCharacter)),
        ("a:http", Err(BadPort)),
        ("a:0", Err(BadPort)),
        ("a:65536", Err(BadPort)),
        ("a:-1", Err(BadPort)),
        ("127.1", Err(BadIpv4)),
        ("2130706433", Err(BadIpv4)),
        ("0x7f.0.0.1", Err(BadIpv4)),
        ("a.0x7f", Err(BadIpv4)),
        ("10.0.0.01", Err(BadIpv4)),
        ("1.2.3.256", Err(BadIpv4)),
    ];
    for (raw, want) in cases {
        assert_eq!(&normalize_host(raw), want, "{raw:?}");
        // The forwarded form is its own normal form: the pod and any
        // proxy after this one read the same host.
        if let Ok(host) = want {
            assert_eq!(normalize_host(&host.to_string()).as_ref(), Ok(host));
        }
    }
    let long_label = "a".repeat(64);
    assert_eq!(normalize_host(&long_label), Err(TooLong));
    let long_name = ["a"; 127].join(".");
    assert_eq!(
        normalize_host(&long_name),
        Ok(NormalizedHost {
            name: long_name.clone(),
            port: None
        })
    );
    assert_eq!(normalize_host(&format!("a{long_name}")), Err(TooLong));
    let forwarded = normalize_host("[FD00::1]:08080").map(|h| h.to_string());
    assert_eq!(forwarded.as_deref(), Ok("[fd00::1]:8080"));
}

/// Hosts come from the network: whatever the bytes, no panic, and what is
/// accepted is stable (normalising the forwarded form changes nothing).
#[test]
fn normalize_host_never_panics_and_is_idempotent_on_generated_hosts() {
    let alphabet: Vec<char> = "[]:.-_aZ0917fx@%, \u{e9}".chars().collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let mut accepted = 0;
    for _ in 0..100_000 {
        let len = next() % 12;
        let raw: String = (0..len)
            .map(|_| alphabet[next() % alphabet.len()])
            .collect();
        if let Ok(host) = normalize_host(&raw) {
            accepted += 1;
            let again = normalize_host(&host.to_string());
            assert_eq!(again.as_ref(), Ok(&host), "{raw:?}");
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

#[test]
fn normalize_path_table() {
    use PathRejected::*;
    let ok = |path: &str, query: Option<&str>| {
        Ok(NormalizedPath {
            path: path.to_owned(),
            query: query.map(str::to_owned),
        })
    };
    let cases: &[(&str, Result<NormalizedPath, PathRejected>)] = &[
        ("/", ok("/", None)),
        ("/api/items?x=1&y=%2F", ok("/api/items", Some("x=1&y=%2F"))),
        ("/a?", ok("/a", Some(""))),
        ("/admin#x", ok("/admin", None)),
        ("/a?q#frag", ok("/a", Some("q"))),
        ("//admin", ok("/admin", None)),
        ("/a//b///c", ok("/a/b/c", None)),
        ("/./admin", ok("/admin", None)),
        ("/api/../admin", ok("/admin", None)),
        ("/../../admin", ok("/admin", None)),
        ("/a/b/..", ok("/a/", None)),
        ("/a/.", ok("/a/", None)),
        ("/a/", ok("/a/", None)),
        ("/%61dmin", ok("/admin", None)),
        ("/%2e%2E/admin", ok("/admin", None)),
        ("/a%7e%5f", ok("/a~_", None)),
        ("/a%3a%3F", ok("/a%3A%3F", None)),
        ("/caf%c3%a9", ok("/caf%C3%A9", None)),
        ("/café", ok("/caf%C3%A9", None)),
        ("/a b{c}", ok("/a%20b%7Bc%7D", None)),
        ("/a=c:@!$&'()*+,", ok("/a=c:@!$&'()*+,", None)),
        ("/a?b;c", ok("/a", Some("b;c"))),
        ("/a#;x", ok("/a", None)),
        ("/api/..;/admin", Err(Semicolon)),
        ("/admin;x", Err(Semicolon)),
        ("/admin;", Err(Semicolon)),
        ("/admin%3bx", Err(Semicolon)),
        ("/admin%3Bx", Err(Semicolon)),
        ("/a;b?c", Err(Semicolon)),
        ("/api/..%2Fadmin", Err(EncodedSeparator)),
        ("/api/%2fadmin", Err(EncodedSeparator)),
        ("/api%5Cadmin", Err(EncodedSeparator)),
        ("/api%5cadmin", Err(EncodedSeparator)),
        ("/api\\admin", Err(Backslash)),
        ("/a%00", Err(ControlCharacter)),
        ("/a%0Ab", Err(ControlCharacter)),
        ("/a%0d%0a", Err(ControlCharacter)),
        ("/a%7F", Err(ControlCharacter)),
        ("/a\nb", Err(ControlCharacter)),
        ("/a?b\r", Err(ControlCharacter)),
        ("/a%", Err(BadPercentEncoding)),
        ("/a%4", Err(BadPercentEncoding)),
        ("/a%zz", Err(BadPercentEncoding)),
        ("admin", Err(NotAbsolute)),
        ("", Err(NotAbsolute)),
        ("*", Err(NotAbsolute)),
        ("?a", Err(NotAbsolute)),
        ("http://h/admin", Err(NotAbsolute)),
    ];
    for (raw, expected) in cases {
        let got = normalize_path(raw);
        assert_eq!(&got, expected, "{raw:?}");
        if let Ok(normal) = got {
            assert!(
                path::is_normalized(&normal.path),
                "{raw:?} → {normal:?} is not normal"
            );
            assert_eq!(
                normalize_path(&normal.path).map(|n| n.path),
                Ok(normal.path.clone()),
                "idempotent"
            );
        }
    }
    let target = normalize_path("/a/../b?q=1#f").expect("valid");
    assert_eq!(target.request_target(), "/b?q=1");
}

#[test]
fn only_normal_paths_count_as_normal() {
    for path in [
        "/",
        "/a",
        "/a/",
        "/a%20b",
        "/a/b.c",
        "/.well-known/x",
        "/a..b",
    ] {
        assert!(path::is_normalized(path), "{path}");
    }
    for path in [
        "", "a", "//a", "/a//b", "/./a", "/a/..", "/a/.", "/%61", "/a%2f", "/a%3a", "/a?b", "/a#b",
        "/a b", "/a\\b", "/a%00", "/a;b", "/a%3B", "/a%01", "/a%1F", "/a%7F",
    ] {
        assert!(!path::is_normalized(path), "{path}");
    }
    let set = load(&policy("all", "ALLOW", "[{}]"));
    let decision = Call {
        path: "//admin",
        ..GET
    }
    .request(&set);
    assert!(!decision.allow);
    assert_eq!(
        decision.reason,
        "request path is not normalised; failing closed"
    );
}

/// Every string of up to five characters from an alphabet of path
/// troublemakers: normalising is idempotent, its output is what
/// `is_normalized` accepts, and an exact path pattern is accepted exactly
/// when it is in normal form.
#[test]
fn normalization_agrees_with_itself_exhaustively() {
    const ALPHABET: [&str; 11] = ["/", ".", "%", "2", "e", "F", "a", "?", "\\", "é", ";"];
    let mut inputs = vec![String::new()];
    for _ in 0..5 {
        let longer: Vec<String> = inputs
            .iter()
            .flat_map(|s| ALPHABET.iter().map(move |c| format!("{s}{c}")))
            .collect();
        inputs.extend(
            longer
                .into_iter()
                .filter(|s| s.starts_with('/') || s.len() <= 1),
        );
    }
    for input in &inputs {
        let normal = normalize_path(input);
        if let Ok(normal) = &normal {
            assert!(path::is_normalized(&normal.path), "{input:?} → {normal:?}");
            let again = normalize_path(&normal.path).map(|n| n.path);
            assert_eq!(again.as_ref(), Ok(&normal.path), "{input:?}");
        }
        if path::is_normalized(input) {
            assert_eq!(
                normal.map(|n| n.path).as_deref(),
                Ok(input.as_str()),
                "{input:?}"
            );
        }
        let exact = pattern::Pattern::Exact(input.clone());
        let accepted = path::check_pattern(&exact).is_ok();
        assert_eq!(accepted, path::is_normalized(input), "pattern {input:?}");
    }
    assert!(inputs.len() > 10_000, "{}", inputs.len());
}

/// Every escape `%00`..`%FF`, in both cases: a path counts as normal exactly
/// when normalising leaves it unchanged, and a policy may name it exactly
/// then (a pattern no normalised path can equal is a silent hole).
#[test]
fn escapes_agree_between_requests_and_policies() {
    for byte in 0..=u8::MAX {
        for input in [format!("/a%{byte:02X}b"), format!("/a%{byte:02x}b")] {
            let unchanged = normalize_path(&input).is_ok_and(|n| n.path == input);
            assert_eq!(path::is_normalized(&input), unchanged, "{input:?}");
            let exact = pattern::Pattern::Exact(input.clone());
            let accepted = path::check_pattern(&exact).is_ok();
            assert_eq!(accepted, unchanged, "pattern {input:?}");
        }
    }
}

/// Known path tricks cannot reach what a DENY on `/admin` and `/admin/*`
/// protects, nor leave what an ALLOW on `/api/*` confines to: each is
/// either refused (400) or normalised onto the protected path.
#[test]
fn path_tricks_cannot_bypass_policy() {
    let set = load(
        &(policy(
            "deny-admin",
            "DENY",
            "[{to: [{operation: {paths: [/admin, '/admin/*']}}]}]",
        ) + &policy(
            "allow-api",
            "ALLOW",
            "[{to: [{operation: {paths: ['/api/*', /admin, '/admin/*']}}]}]",
        )),
    );
    let tricks = [
        "/admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/admin#x",
        "/ADMIN",
        "/Admin/",
        "/api/..%2Fadmin",
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/admin/",
        "/admin/x",
        "/admin/./x",
        "/admin//x",
        "/api/../ADMIN/x",
        "/api%2f../admin",
        "/api\\..\\admin",
        "/admin%00",
        "/api/../../admin",
        "/%2561dmin/../admin",
        // Java servers drop `;` path parameters: `/admin;x` is `/admin`,
        // `/api/..;/admin` is `/admin`.
        "/api/..;/admin",
        "/admin;x",
        "/admin%3bx",
        "/admin;/x",
    ];
    for raw in tricks {
        let Ok(normal) = normalize_path(raw) else {
            continue; // refused with 400
        };
        let call = Call {
            path: &normal.path,
            ..GET
        };
        let decision = call.request(&set);
        assert!(!decision.allow, "{raw:?} → {:?} was allowed", call.path);
        assert_eq!(
            decision.policy.as_ref().map(PolicyRef::as_str),
            Some("shop/deny-admin"),
            "{raw:?}"
        );
    }
    // An ALLOW on /api/* does not stretch to siblings.
    let set = load(&policy(
        "allow-api",
        "ALLOW",
        "[{to: [{operation: {paths: ['/api/*']}}]}]",
    ));
    for raw in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/API/items",
        "/apix",
        "/api",
    ] {
        let normal = normalize_path(raw).expect("valid");
        let call = Call {
            path: &normal.path,
            ..GET
        };
        assert!(!call.request(&set).allow, "{raw:?}");
    }
    for raw in ["/api/..;/admin", "/api/..%3B/admin", "/api;/../admin"] {
        let Ok(normal) = normalize_path(raw) else {
            continue; // refused with 400
        };
        let call = Call {
            path: &normal.path,
            ..GET
        };
        assert!(!call.request(&set).allow, "{raw:?} → {:?}", call.path);
    }
    assert!(GET.request(&set).allow);
}

// ---- PeerAuthentication ---------------------------------------------------

#[test]
fn mtls_mode_resolution() {
    let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
    let mesh = peer("istio-system", "default", None, "STRICT");
    let shop_permissive = peer("shop", "ns", None, "PERMISSIVE");
    let backend_strict = peer("shop", "backend", Some("app: backend"), "STRICT");
    let backend_unset = peer("shop", "backend-unset", Some("app: backend"), "UNSET");
    let backend_permissive = peer("shop", "backend-p", Some("app: backend"), "PERMISSIVE");
    let root_selector = peer("istio-system", "root-db", Some("app: db"), "PERMISSIVE");
    use MtlsMode::{Permissive, Strict};
    // (policies, namespace, app, expected)
    let cases: &[(String, &str, &str, Option<MtlsMode>)] = &[
        (String::new(), "shop", "backend", None),
        (mesh.clone(), "shop", "backend", Some(Strict)),
        (
            mesh.clone() + &shop_permissive,
            "shop",
            "backend",
            Some(Permissive),
        ),
        (mesh.clone() + &shop_permissive, "data", "db", Some(Strict)),
        (
            mesh.clone() + &shop_permissive + &backend_strict,
            "shop",
            "backend",
            Some(Strict),
        ),
        (
            mesh.clone() + &shop_permissive + &backend_strict,
            "shop",
            "frontend",
            Some(Permissive),
        ),
        (
            shop_permissive.clone() + &backend_unset,
            "shop",
            "backend",
            Some(Permissive),
        ),
        (backend_unset.clone(), "shop", "backend", None),
        (
            backend_permissive.clone() + &backend_strict,
            "shop",
            "backend",
            Some(Strict),
        ),
        (
            backend_strict.clone() + &backend_permissive,
            "shop",
            "backend",
            Some(Strict),
        ),
        (
            peer("shop", "a", None, "UNSET") + &mesh,
            "shop",
            "backend",
            Some(Strict),
        ),
        (mesh.clone() + &root_selector, "data", "db", Some(Strict)),
        (
            mesh.clone() + &root_selector,
            "istio-system",
            "db",
            Some(Permissive),
        ),
    ];
    for (yaml, namespace, app, expected) in cases {
        let set = load(yaml);
        assert_eq!(
            set.mtls_mode(namespace, &labels(app)),
            *expected,
            "{namespace}/{app}\n{yaml}"
        );
    }
}

// ---- loading --------------------------------------------------------------

/// Every rejected input names the file, a line and the field.
#[test]
fn loader_errors_name_file_line_and_field() {
    let ap = |rules: &str| policy("p", "ALLOW", rules);
    let source = |s: &str| ap(&format!("[{}]", src(s)));
    let operation = |s: &str| ap(&format!("[{}]", op(s)));
    let condition = |s: &str| ap(&format!("[{}]", when(s)));
    // (yaml, line, expected pieces of the message)
    let cases: Vec<(String, usize, &[&str])> = vec![
        (
            source("principal: [x]"),
            7,
            &["spec.rules[0].from[0].source.principal", "unknown field"],
        ),
        (
            policy("p", "CUSTOM", "[{}]"),
            6,
            &["spec.action", "CUSTOM", "not supported"],
        ),
        (
            ap("[{}]").replace("  action:", "  provider: {name: ext}\n  action:"),
            6,
            &["spec.provider", "does not support"],
        ),
        (
            condition("{key: 'request.auth.claims[iss', values: [x]}"),
            7,
            &["spec.rules[0].when[0].key", "nested as [a][b]"],
        ),
        (
            condition("{key: destination.ip, values: [x]}"),
            7,
            &["when[0].key", "\"destination.ip\""],
        ),
        (
            condition("{key: connection.sni, values: [x]}"),
            7,
            &["when[0].key", "not supported"],
        ),
        (
            condition("{key: experimental.envoy.filters.x, values: [x]}"),
            7,
            &["when[0].key", "not supported"],
        ),
        (
            source("requestPrincipals: [nobody]"),
            7,
            &["source.requestPrincipals[0]", "not a request principal"],
        ),
        (
            source("remoteIpBlocks: [10.0.0.0/8]"),
            7,
            &["source.remoteIpBlocks", "does not support"],
        ),
        (
            ap("[{}]").replace(
                "  action:",
                "  targetRefs: [{kind: Service, name: x}]\n  action:",
            ),
            6,
            &["spec.targetRefs", "does not support"],
        ),
        (
            source("ipBlocks: [10.0.0.0/33]"),
            7,
            &["source.ipBlocks[0]", "10.0.0.0/33"],
        ),
        (
            source("notIpBlocks: [10.0.0.1, nonsense]"),
            7,
            &["source.notIpBlocks[1]", "not a CIDR"],
        ),
        (
            operation("ports: ['0']"),
            7,
            &["operation.ports[0]", "between 1 and 65535"],
        ),
        (
            operation("ports: [65536]"),
            7,
            &["operation.ports[0]", "65536"],
        ),
        (
            operation("notPorts: ['8080', http]"),
            7,
            &["operation.notPorts[1]", "\"http\""],
        ),
        (operation("ports: [-1]"), 7, &["operation.ports[0]", "-1"]),
        (
            operation("paths: ['/api/*/x']"),
            7,
            &["operation.paths[0]", "`*` is only allowed"],
        ),
        (
            operation("hosts: ['a.*.com']"),
            7,
            &["operation.hosts[0]", "`*`"],
        ),
        (
            source("principals: ['*/ns/*']"),
            7,
            &["source.principals[0]", "`*`"],
        ),
        (
            operation("paths: ['/api/{*}']"),
            7,
            &["operation.paths[0]", "path templates"],
        ),
        (
            operation("paths: ['/api/{**}']"),
            7,
            &["operation.paths[0]", "path templates"],
        ),
        (
            operation("paths: ['/a//b']"),
            7,
            &["operation.paths[0]", "`//`"],
        ),
        (
            operation("paths: ['/%61dmin']"),
            7,
            &["operation.paths[0]", "write \"/admin\""],
        ),
        (
            operation("paths: [admin]"),
            7,
            &["operation.paths[0]", "start with '/'"],
        ),
        (
            operation("paths: ['/a/../b']"),
            7,
            &["operation.paths[0]", "`..`"],
        ),
        (
            operation("methods: ['']"),
            7,
            &["operation.methods[0]", "empty value"],
        ),
        (
            source("principals: ['spiffe://cluster.local/ns/a/sa/b']"),
            7,
            &["principals[0]", "without `spiffe://`"],
        ),
        (
            source("namespaces: [Shop]"),
            7,
            &["namespaces[0]", "not a namespace"],
        ),
        (
            source("principals: x"),
            7,
            &["source.principals", "invalid type"],
        ),
        (
            source("principals: []"),
            1,
            &["spec.rules[0].from[0].source", "sets no field"],
        ),
        (
            ap("[{to: [{}]}]"),
            1,
            &["spec.rules[0].to[0].operation", "is required"],
        ),
        (
            condition("{key: source.ip}"),
            1,
            &["spec.rules[0].when[0]", "`values` or `notValues`"],
        ),
        (
            condition("{key: source.ip, values: [10.0.0.0/8, bad]}"),
            1,
            &["spec.rules[0].when[0].values[1]", "not a CIDR"],
        ),
        (
            condition("{key: destination.port, notValues: ['99999']}"),
            1,
            &["when[0].notValues[0]", "99999"],
        ),
        (
            condition("{key: 'request.headers[bad name]', values: [x]}"),
            7,
            &["when[0].key", "header name"],
        ),
        (
            condition("{key: 'request.headers[host]', values: [admin.example]}"),
            7,
            &[
                "field `spec.rules[0].when[0].key`",
                ":authority",
                "use `to.operation.hosts`",
            ],
        ),
        (
            condition("{key: 'request.headers[Host]', notValues: [x]}"),
            7,
            &["field `spec.rules[0].when[0].key`", "to.operation.hosts"],
        ),
        (
            operation("paths: ['/a%01']"),
            7,
            &["operation.paths[0]", "control character", "never matches"],
        ),
        (
            operation("notPaths: ['/admin;x']"),
            7,
            &["operation.notPaths[0]", "';'", "never matches"],
        ),
        (
            operation("paths: ['*%3Bjsessionid']"),
            7,
            &["operation.paths[0]", "';'"],
        ),
        (
            source("principals: [frontend]"),
            7,
            &[
                "source.principals[0]",
                "<trust-domain>/ns/<namespace>/sa/<service-account>",
            ],
        ),
        (
            source("notPrincipals: ['cluster.local/ns/shop/sa/frontend/x']"),
            7,
            &["source.notPrincipals[0]", "not a principal"],
        ),
        (
            condition("{key: source.principal, values: ['cluster.local/ns/shop']}"),
            1,
            &["when[0].values[0]", "not a principal"],
        ),
        (
            ap("[{}]").replace("namespace: shop", "namespace: Shop"),
            1,
            &["metadata.namespace", "\"Shop\""],
        ),
        (
            ap("[{}]").replace(", namespace: shop", ""),
            1,
            &["metadata.namespace", "is required"],
        ),
        (
            ap("[{}]").replace("namespace: shop", "namespace: shop, uid: x"),
            3,
            &["metadata.uid", "unknown field"],
        ),
        (
            ap("[{}]").replace("metadata:", "status: {}\nmetadata:"),
            3,
            &["field `status`", "unknown field"],
        ),
        (
            ap("[{}]").replace("app: backend", "app: backend, app: x"),
            5,
            &["spec.selector.matchLabels", "twice"],
        ),
        (
            peer("shop", "p", None, "DISABLE"),
            5,
            &["spec.mtls.mode", "DISABLE", "not supported"],
        ),
        (
            peer("shop", "p", None, "STRICT").replace(
                "  mtls:",
                "  portLevelMtls: {8080: {mode: DISABLE}}\n  mtls:",
            ),
            5,
            &["spec.portLevelMtls", "does not support"],
        ),
        (
            "kind: Gateway\napiVersion: networking.istio.io/v1\n".to_owned(),
            1,
            &["unsupported kind \"Gateway\""],
        ),
        (
            "apiVersion: security.istio.io/v1\nmetadata: {name: x}\n".to_owned(),
            1,
            &["missing `kind`"],
        ),
        (
            ap("[{}]").replace("security.istio.io/v1", "security.istio.io/v2"),
            1,
            &["apiVersion \"security.istio.io/v2\""],
        ),
        (
            "- just\n- a list\n".to_owned(),
            1,
            &["invalid type: sequence"],
        ),
    ];
    for (yaml, line, pieces) in &cases {
        let err = load_err(yaml);
        let prefix = format!("{FILE}:{line}: document 1");
        assert!(
            err.starts_with(&prefix),
            "want {prefix:?}, got: {err}\n{yaml}"
        );
        for piece in *pieces {
            assert!(err.contains(piece), "want {piece:?} in: {err}\n{yaml}");
        }
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// serde stops at the first error; `policy check` goes on to list every
/// wrong field of a document, each at its own line: here a misspelled
/// field, an unsupported Istio field, a `*` inside a path, a bad port among
/// good ones and an unsupported condition key (a required field).
#[test]
fn every_wrong_field_of_a_document_is_reported() {
    const BAD: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  provider: {name: ext}
  selectr: {matchLabels: {app: backend}}
  rules:
    - to:
        - operation:
            paths: [/api/*/items, /ok]
            ports: [80, 0, 443]
      when:
        - {key: destination.ip, values: [10.0.0.1]}
        - {key: source.namespace, values: [shop]}
    - from:
        - source: {principals: [cluster.local/ns/shop/sa/frontend], namespace: [shop]}
";
    let err = load_err(BAD);
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        (
            5,
            "field `spec.provider`: `provider` is an Istio feature nodeward does not support",
        ),
        (6, "field `spec.selectr`: unknown field `selectr`"),
        (
            10,
            "field `spec.rules[0].to[0].operation.paths[0]`: \"/api/*/items\"",
        ),
        (
            11,
            "field `spec.rules[0].to[0].operation.ports[1]`: 0 is not a port",
        ),
        (
            13,
            "field `spec.rules[0].when[0].key`: condition key \"destination.ip\"",
        ),
        (
            16,
            "field `spec.rules[1].from[0].source.namespace`: unknown field `namespace`",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{err}");
    for (line, (number, piece)) in lines.iter().zip(expected) {
        let prefix = format!("{FILE}:{number}: document 1 (AuthorizationPolicy shop/p): {piece}");
        assert!(line.starts_with(&prefix), "want {prefix:?}, got:\n{err}");
    }
    // Fixed, the same document loads: nothing was left out along the way.
    let fixed = BAD
        .replace("  provider: {name: ext}\n", "")
        .replace("selectr", "selector")
        .replace("/api/*/items", "/api/*")
        .replace("80, 0, 443", "80, 443")
        .replace("destination.ip", "source.ip")
        .replace("namespace: [shop]}", "namespaces: [shop]}");
    assert_eq!(load(&fixed).policies().count(), 1);
}

/// Each error after the first costs a pass over the document, so a
/// document gets at most `MAX_ERRORS_PER_DOCUMENT` errors, and a huge one
/// (a file may spend 1 MiB on passes) fewer; then a line says so.
#[test]
fn errors_per_document_are_capped() {
    let fields: String = (0..MAX_ERRORS_PER_DOCUMENT + 5)
        .map(|i| format!("  typo{i}: x\n"))
        .collect();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: shop}}\nspec:\n{fields}"
    );
    let err = load_err(&yaml);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), MAX_ERRORS_PER_DOCUMENT + 1, "{err}");
    assert!(lines[0].contains("field `spec.typo0`"), "{err}");
    assert!(
        lines[MAX_ERRORS_PER_DOCUMENT].ends_with(&format!(
            "stopped after {MAX_ERRORS_PER_DOCUMENT} errors; there may be more"
        )),
        "{err}"
    );
    // 600 KiB: one pass over it fits in the budget, not two.
    let filler = "  # filler\n".repeat(600 * 1024 / 11);
    let err = load_err(&format!("{yaml}{filler}"));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("field `spec.typo0`"), "{err}");
    assert!(
        lines[1].ends_with("stopped after 1 error; there may be more"),
        "{err}"
    );
}

#[test]
fn errors_point_at_the_document_and_line_in_multi_document_files() {
    const BAD: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  rules:
    - from:
        - source:
            principals: [cluster.local/ns/shop/sa/ok]
            ipBlocks: [300.0.0.1]
---
---
";
    let yaml = format!(
        "# leading comment\n---\n{}{}",
        policy("good", "ALLOW", "[{}]"),
        BAD
    );
    let err = load_err(&yaml);
    assert_eq!(
        err,
        "policies/test.yaml:19: document 2 (AuthorizationPolicy shop/bad): field \
         `spec.rules[0].from[0].source.ipBlocks[0]`: \"300.0.0.1\" is not a CIDR or IP address"
    );
}

#[test]
fn all_errors_across_files_are_collected() {
    let good = policy("p", "ALLOW", "[{}]");
    let sources = [
        (
            PathBuf::from("a.yaml"),
            good.clone() + &policy("q", "CUSTOM", "[{}]"),
        ),
        (
            PathBuf::from("b.yaml"),
            good.clone() + "kind: Nope\napiVersion: v1\n",
        ),
        (
            PathBuf::from("c.yaml"),
            "x".repeat(MAX_FILE_BYTES as usize + 1),
        ),
    ];
    let err = PolicySet::from_sources(&sources, Settings::default()).expect_err("invalid");
    let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0]
            .starts_with("a.yaml:14: document 2 (AuthorizationPolicy shop/q): field `spec.action`"),
        "{}",
        lines[0]
    );
    let duplicate = "b.yaml:1: document 1 (AuthorizationPolicy shop/p): \
                     duplicate AuthorizationPolicy shop/p; first defined at a.yaml:1";
    assert_eq!(lines[1], duplicate);
    assert!(
        lines[2].starts_with("b.yaml:9: document 2 (Nope): unsupported kind"),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        "c.yaml: larger than 1 MiB, the limit for a policy file"
    );
    assert_eq!(err.to_string(), lines.join("\n"));
    assert_eq!(err.0[3].line, None);
}

#[test]
fn same_name_in_another_kind_or_namespace_is_not_a_duplicate() {
    let yaml = policy("p", "ALLOW", "[{}]")
        + &policy_in("data", "{}", "p", "ALLOW", "[{}]")
        + &peer("shop", "p", None, "STRICT");
    let set = load(&yaml);
    assert_eq!(
        set.summary().to_string(),
        "1 file, 2 AuthorizationPolicies (2 ALLOW, 0 DENY, 0 AUDIT), 1 PeerAuthentication"
    );
}

#[test]
fn documents_may_be_empty_and_yaml_tricks_are_contained() {
    let yaml = format!(
        "---\n# nothing\n---\n{}---\n...\n",
        policy("p", "ALLOW", "[{}]")
    );
    assert_eq!(load(&yaml).policies().count(), 1);
    assert_eq!(
        load("").summary().to_string(),
        "1 file, 0 AuthorizationPolicies (0 ALLOW, 0 DENY, 0 AUDIT), 0 PeerAuthentications"
    );
    // Self-referencing and exponential aliases do not hang or crash.
    let err = load_err("a: &a [*a]\nkind: AuthorizationPolicy\n");
    assert!(err.contains("missing `apiVersion`"), "{err}");
    let mut laughs = String::from(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: shop
  labels: {team: x}
  annotations:
    l0: &l0 [lol]
",
    );
    for i in 1..12 {
        let p = i - 1;
        let refs = vec![format!("*l{p}"); 8].join(", ");
        laughs.push_str(&format!("    l{i}: &l{i} [{refs}]\n"));
    }
    // 8^11 references under an ignored field: skipped, never expanded.
    assert_eq!(load(&laughs).policies().count(), 1);
    let aliased = "apiVersion: security.istio.io/v1\n\
                   kind: AuthorizationPolicy\n\
                   metadata: {name: p, namespace: shop}\n\
                   spec: {rules: [{from: &a [{source: {namespaces: [a]}}], to: *a}]}\n";
    let err = load_err(aliased);
    assert!(err.contains("spec.rules[0].to"), "{err}");
    // A merge key is not a silent way in.
    let err = load_err(&policy("p", "ALLOW", "[{<<: {from: []}}]"));
    assert!(err.contains("<<"), "{err}");
}

#[test]
fn load_dir_reads_configmap_mounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    // Kubernetes: files are symlinks through `..data` to a timestamped dir.
    write(
        "..2026_05_01_10_00_00.1/shop.yaml",
        &policy("v1", "ALLOW", "[{}]"),
    );
    symlink("..2026_05_01_10_00_00.1", root.join("..data")).expect("symlink");
    symlink("..data/shop.yaml", root.join("shop.yaml")).expect("symlink");
    write(
        "EXTRA.YML",
        &policy_in("data", "{}", "extra", "DENY", "[{}]"),
    );
    write(".hidden.yaml", "not: [valid");
    write("README.md", "# not policy");
    write("nested/bad.yaml", "not: [valid");
    fs::create_dir(root.join("dir.yaml")).expect("mkdir");
    let set = PolicySet::load_dir(root, Settings::default()).expect("valid");
    let names: Vec<_> = set
        .policies()
        .map(|p| (p.namespace, p.name, p.file.to_path_buf(), p.line))
        .collect();
    assert_eq!(
        names,
        [
            ("data", "extra", root.join("EXTRA.YML"), 1),
            ("shop", "v1", root.join("shop.yaml"), 1),
        ]
    );
    // An atomic ConfigMap update swaps `..data`; a reload sees the new set.
    write(
        "..2026_05_01_11_00_00.2/shop.yaml",
        &policy("v2", "ALLOW", "[{}]"),
    );
    symlink("..2026_05_01_11_00_00.2", root.join("..data_tmp")).expect("symlink");
    fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    let set = PolicySet::load_dir(root, Settings::default()).expect("valid");
    assert!(set.policies().any(|p| p.name == "v2"));
    // A dangling symlink is an error, not a silently smaller policy set
    // (one into `..data` is the writer's transient state: see
    // `load_dir_reads_one_configmap_snapshot`).
    symlink("elsewhere/gone.yaml", root.join("gone.yaml")).expect("symlink");
    let err = PolicySet::load_dir(root, Settings::default())
        .expect_err("dangling")
        .to_string();
    assert!(err.contains("gone.yaml: cannot read"), "{err}");
}

/// Kubernetes' atomic writer makes the new timestamped directory, links new
/// keys (`c.yaml -> ..data/c.yaml`, dangling until the swap), swaps
/// `..data`, then unlinks removed keys and deletes the old directory. A
/// load at any moment sees exactly one snapshot.
#[test]
fn load_dir_reads_one_configmap_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let snapshot = |ts: &str, version: &str, keys: &[&str]| {
        let ts_dir = root.join(ts);
        fs::create_dir(&ts_dir).expect("mkdir");
        for key in keys {
            let name = format!("{key}-{version}");
            let yaml = policy_in("shop", "{}", &name, "ALLOW", "[{}]");
            fs::write(ts_dir.join(format!("{key}.yaml")), yaml).expect("write");
        }
    };
    let swap = |ts: &str| {
        let _ = fs::remove_file(root.join("..data_tmp"));
        symlink(ts, root.join("..data_tmp")).expect("symlink");
        fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    };
    let link = |key: &str| {
        let target = format!("..data/{key}.yaml");
        symlink(target, root.join(format!("{key}.yaml"))).expect("symlink");
    };
    let names =
        |set: &PolicySet| -> Vec<String> { set.policies().map(|p| p.name.to_owned()).collect() };
    snapshot("..ts1", "v1", &["a", "b"]);
    swap("..ts1");
    link("a");
    link("b");
    fs::write(
        root.join("local.yaml"),
        policy_in("data", "{}", "local", "ALLOW", "[{}]"),
    )
    .expect("write");

    // `..data` swapped after the first file was read: still all of v1.
    snapshot("..ts2", "v2", &["a", "b"]);
    let mut swapped = false;
    let mut errors = Vec::new();
    let sources = load::read_dir_pausing(root, &mut errors, &mut || {
        if !swapped {
            swapped = true;
            swap("..ts2");
        }
    });
    assert!(errors.is_empty(), "{errors:?}");
    let set = PolicySet::from_sources(&sources, Settings::default()).expect("valid");
    assert_eq!(names(&set), ["a-v1", "b-v1", "local"]);
    let files: Vec<PathBuf> = sources.iter().map(|(path, _)| path.clone()).collect();
    let expected = ["a.yaml", "b.yaml", "local.yaml"].map(|f| root.join(f));
    assert_eq!(files, expected, "named as the user sees them");

    // A new key is linked before the swap: its link dangles until then.
    snapshot("..ts3", "v3", &["a", "b", "c"]);
    link("c");
    let set = PolicySet::load_dir(root, Settings::default()).expect("valid");
    assert_eq!(names(&set), ["a-v2", "b-v2", "local"]);
    swap("..ts3");
    let set = PolicySet::load_dir(root, Settings::default()).expect("valid");
    assert_eq!(names(&set), ["a-v3", "b-v3", "c-v3", "local"]);

    // A removed key is unlinked after the swap: its link dangles until then.
    snapshot("..ts4", "v4", &["a", "c"]);
    swap("..ts4");
    let set = PolicySet::load_dir(root, Settings::default()).expect("valid");
    assert_eq!(names(&set), ["a-v4", "c-v4", "local"]);

    // The old snapshot deleted while it is being read: an error (the last
    // good set stays), never half of each.
    snapshot("..ts5", "v5", &["a", "c"]);
    let mut swapped = false;
    let mut errors = Vec::new();
    let sources = load::read_dir_pausing(root, &mut errors, &mut || {
        if !swapped {
            swapped = true;
            swap("..ts5");
            fs::remove_dir_all(root.join("..ts4")).expect("rm");
        }
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("c.yaml: cannot read"),
        "{errors:?}"
    );
    assert!(sources.iter().all(|(_, text)| !text.contains("-v5")));
}

/// Principals are SPIFFE IDs of workloads, `<td>/ns/<ns>/sa/<sa>` (the
/// only IDs callers carry), or Istio prefix/suffix patterns of one. Anything
/// else could never match: in a DENY policy, a rule that silently does
/// nothing.
#[test]
fn principals_must_be_workload_ids_or_patterns_of_one() {
    for ok in [
        "cluster.local/ns/shop/sa/frontend",
        "td-2.example_x/ns/a-1/sa/b-2",
        "cluster.local/ns/shop/sa/front.end",
        "*",
        "cluster.local/*",
        "cluster*",
        "cluster.local/n*",
        "cluster.local/ns/*",
        "cluster.local/ns/shop/*",
        "cluster.local/ns/shop/s*",
        "cluster.local/ns/shop/sa/front*",
        "*/sa/frontend",
        "*a/frontend",
        "*frontend",
        "*/ns/shop/sa/frontend",
        "*.local/ns/shop/sa/frontend",
        "*s/shop/sa/frontend",
    ] {
        assert!(file::parse_principal(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        "frontend",
        "cluster.local",
        "cluster.local/ns/shop",
        "cluster.local/ns/shop/sa",
        "cluster.local/ns/shop/sa/",
        "cluster.local/ns/shop/sa/frontend/x",
        "cluster.local//ns/shop/sa/frontend",
        "/ns/shop/sa/frontend",
        "Cluster.local/ns/shop/sa/frontend",
        "cluster.local/NS/shop/sa/frontend",
        "cluster.local/ns/Shop/sa/frontend",
        "cluster.local/ns/shop/sa/Frontend",
        "cluster.local/ns/../sa/frontend",
        "cluster.local/ns/shop/sa/.",
        "cluster.local/ns/shop/sa/front_end",
        "cluster.local/nodeward/node/n1",
        "cluster.local/foo/*",
        "cluster.local/ns/shop/sa/frontend/*",
        "cluster.local/ns//*",
        "*/sb/frontend",
        "*/ns/shop/sa/frontend/x",
        "*/x/ns/shop/sa/frontend",
        "*//sa/frontend",
        "*Frontend",
        "spiffe://cluster.local/ns/shop/sa/frontend",
    ] {
        assert!(file::parse_principal(bad).is_err(), "{bad:?}");
    }
}

/// An empty directory is a valid set (the default policy decides), and the
/// summary says so plainly: with `defaultPolicy: allow` it opens everything.
#[test]
fn empty_policy_directory_is_valid_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("README.md"), "# not policy").expect("write");
    let settings = Settings {
        default_policy: DefaultPolicy::Allow,
        ..Settings::default()
    };
    let set = PolicySet::load_dir(dir.path(), settings).expect("valid");
    assert_eq!(set.summary().files, 0);
    assert_eq!(set.summary().to_string(), "no policy files");
    assert!(decided(GET.connection(&set)).allow);
    let set = PolicySet::from_sources(&[], Settings::default()).expect("valid");
    assert_eq!(set.summary().to_string(), "no policy files");
    // Failing closed says that instead.
    let closed = PolicySet::deny_all(Settings::default());
    assert_eq!(
        closed.summary().to_string(),
        "no valid policy set loaded: denying everything"
    );
}

/// `policy check` passes a directory that lets `defaultPolicy` decide every
/// call (exit 0: it is valid), but warns: under the default, deny, the proxy
/// then refuses every connection.
#[test]
fn check_warns_when_the_default_decides_every_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = tool::check(dir.path()).expect("an empty directory is valid");
    assert!(
        report.summary.ends_with(": ok: no policy files"),
        "{report:?}"
    );
    let [warning] = report.warnings.as_slice() else {
        panic!("expected one warning: {report:?}");
    };
    assert!(warning.starts_with("warning: "), "{warning}");
    assert!(warning.contains("no policy files"), "{warning}");
    assert!(warning.contains("denies every connection"), "{warning}");
    // Policies, but none that allows anything: the same effect.
    let deny_admin = policy(
        "deny-admin",
        "DENY",
        &format!("[{}]", op("paths: [/admin]")),
    );
    fs::write(dir.path().join("deny.yaml"), &deny_admin).expect("write");
    let report = tool::check(dir.path()).expect("valid");
    let [warning] = report.warnings.as_slice() else {
        panic!("expected one warning: {report:?}");
    };
    assert!(
        warning.contains("no ALLOW AuthorizationPolicy"),
        "{warning}"
    );
    fs::write(
        dir.path().join("allow.yaml"),
        policy("allow-get", "ALLOW", &format!("[{}]", op("methods: [GET]"))),
    )
    .expect("write");
    let report = tool::check(dir.path()).expect("valid");
    assert_eq!(report.warnings, Vec::<String>::new());
}

#[test]
fn load_dir_refuses_missing_dirs_and_large_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = PolicySet::load_dir(&missing, Settings::default())
        .expect_err("missing")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: cannot read policy directory",
            missing.display()
        )),
        "{err}"
    );
    fs::write(
        dir.path().join("big.yaml"),
        "#".repeat(MAX_FILE_BYTES as usize + 1),
    )
    .expect("write");
    let err = PolicySet::load_dir(dir.path(), Settings::default())
        .expect_err("big")
        .to_string();
    assert!(err.contains("big.yaml: larger than 1 MiB"), "{err}");
}

/// The example mesh in `policies/` is valid and means what its comments say.
#[test]
fn example_policies_load_and_decide() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let set = PolicySet::load_dir(&dir, Settings::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        set.summary().to_string(),
        "5 files, 7 AuthorizationPolicies (5 ALLOW, 1 DENY, 1 AUDIT), 1 PeerAuthentication, \
         3 RateLimitPolicies, 1 RequestAuthentication"
    );
    let backend = |principal, method, path| Call {
        principal: Some(principal),
        method,
        path,
        ..GET
    };
    assert_eq!(GET.connection(&set), L4Decision::NeedsHttp);
    let decision = backend(FRONTEND, "GET", "/api/items").request(&set);
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (true, "ALLOW policy shop/backend-frontend-api matched")
    );
    let decision = backend(FRONTEND, "POST", "/api/items").request(&set);
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (false, "no ALLOW policy for shop/backend matched")
    );
    let decision = backend(FRONTEND, "GET", "/admin").request(&set);
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (false, "DENY policy shop/backend-admin-only-ops matched")
    );
    assert_eq!(refs(&decision), ["shop/backend-audit-admin"]);
    let decision = backend(OPS_TOOL, "GET", "/admin").request(&set);
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (true, "ALLOW policy shop/backend-ops-admin matched")
    );
    assert_eq!(refs(&decision), ["shop/backend-audit-admin"]);
    assert!(!backend(OPS_TOOL, "GET", "/api/items").request(&set).allow);

    let decision = decided(TO_DB.connection(&set));
    assert_eq!(
        (decision.allow, decision.reason.as_str()),
        (false, "no ALLOW policy for data/db matched")
    );
    assert!(
        decided(
            Call {
                principal: Some(BACKEND),
                ..TO_DB
            }
            .connection(&set)
        )
        .allow
    );
    let to_cache = Call {
        name: "cache",
        app: "cache",
        port: 9000,
        ..GET
    };
    assert!(decided(to_cache.connection(&set)).allow);
    assert!(
        decided(
            Call {
                principal: Some(BACKEND),
                ..to_cache
            }
            .connection(&set)
        )
        .allow
    );
    assert!(
        !decided(
            Call {
                principal: Some(OPS_TOOL),
                ..to_cache
            }
            .connection(&set)
        )
        .allow
    );
    assert!(
        !decided(
            Call {
                port: 9001,
                ..to_cache
            }
            .connection(&set)
        )
        .allow
    );
    let to_frontend = Call {
        principal: Some(BACKEND),
        name: "frontend",
        app: "frontend",
        ..GET
    };
    let decision = decided(to_frontend.connection(&set));
    assert_eq!(
        decision.reason,
        "no ALLOW policy selects shop/frontend; defaultPolicy deny"
    );
    for (namespace, app) in [("shop", "backend"), ("data", "db"), ("ops", "ops-tool")] {
        let labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
        assert_eq!(set.mtls_mode(namespace, &labels), Some(MtlsMode::Strict));
    }
}

#[test]
fn policies_lists_kind_action_and_origin() {
    let yaml = format!(
        "# header\n\n{}{}",
        policy("p", "AUDIT", "[{}]"),
        peer("shop", "m", None, "UNSET")
    );
    let set = load(&yaml);
    let infos: Vec<PolicyInfo<'_>> = set.policies().collect();
    assert_eq!(infos.len(), 2);
    assert_eq!(
        (infos[0].kind, infos[0].action, infos[0].line),
        (PolicyKind::AuthorizationPolicy, Some(Action::Audit), 3)
    );
    assert_eq!(
        (infos[1].kind, infos[1].mtls_mode, infos[1].line),
        (PolicyKind::PeerAuthentication, None, 11)
    );
    assert_eq!(infos[1].file, Path::new(FILE));
    let json = serde_json::to_value(infos[0]).expect("json");
    assert_eq!(json["action"], "AUDIT");
    assert_eq!(json["kind"], "AuthorizationPolicy");
}

#[test]
fn default_policy_parses_and_serialises_lowercase() {
    assert_eq!("allow".parse(), Ok(DefaultPolicy::Allow));
    assert_eq!("deny".parse(), Ok(DefaultPolicy::Deny));
    assert!("Deny".parse::<DefaultPolicy>().is_err());
    assert_eq!(
        serde_json::to_value(DefaultPolicy::Allow).expect("json"),
        "allow"
    );
    let parsed: DefaultPolicy = serde_json::from_str("\"deny\"").expect("json");
    assert_eq!(parsed, DefaultPolicy::Deny);
    assert_eq!(Settings::default().default_policy, DefaultPolicy::Deny);
    assert_eq!(Settings::default().root_namespace, "istio-system");
}

#[test]
fn policy_set_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySet>();
    assert_send_sync::<Decision>();
}

// ---- rate limits ----------------------------------------------------------

/// A `RateLimitPolicy` document whose `spec` is `lines` (two-space indented
/// below `spec:`), so `lines[i]` is on file line `5 + i`.
fn rate_policy(name: &str, lines: &[&str]) -> String {
    let mut yaml = format!(
        "apiVersion: nodeward.io/v1alpha1\nkind: RateLimitPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n"
    );
    for line in lines {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml + "---\n"
}

const RATE_BUCKET: &str = "bucket: {maxTokens: 10, tokensPerFill: 5, fillInterval: 1s}";

fn rate_limit_names(set: &PolicySet, call: Call<'_>, with_request: bool) -> Vec<String> {
    call.with(|conn, req| set.rate_limits_for(conn, with_request.then_some(req)))
        .iter()
        .map(|info| info.policy.to_string())
        .collect()
}

#[test]
fn rate_limit_errors_name_file_line_and_field() {
    let requests = |extra: &str| {
        let mut lines = vec!["limit: requests", RATE_BUCKET];
        lines.extend(extra.lines());
        rate_policy("r", &lines)
    };
    let bucket =
        |fields: &str| rate_policy("r", &["limit: requests", &format!("bucket: {{{fields}}}")]);
    let interval = |value: &str| {
        bucket(&format!(
            "maxTokens: 1, tokensPerFill: 1, fillInterval: {value}"
        ))
    };
    let counts = |max: &str, per_fill: &str| {
        bucket(&format!(
            "maxTokens: {max}, tokensPerFill: {per_fill}, fillInterval: 1s"
        ))
    };
    let connections =
        |matches: &str| rate_policy("r", &["limit: connections", RATE_BUCKET, matches]);
    // (yaml, line, expected pieces of the message)
    let cases: Vec<(String, usize, &[&str])> = vec![
        (
            requests("burst: 5"),
            7,
            &["field `spec.burst`", "unknown field"],
        ),
        (
            requests("match: {sourceIps: [10.0.0.0/8]}"),
            7,
            &["field `spec.match.sourceIps`", "unknown field"],
        ),
        (
            bucket("maxTokens: 1, tokensPerFill: 1, fillInterval: 1s, burst: 2"),
            6,
            &["`spec.bucket.burst`"],
        ),
        (
            interval("1h"),
            6,
            &["`spec.bucket.fillInterval`", "\"1h\" is not a duration"],
        ),
        (
            interval("1.5s"),
            6,
            &["`spec.bucket.fillInterval`", "not a duration"],
        ),
        (
            interval("-1s"),
            6,
            &["`spec.bucket.fillInterval`", "not a duration"],
        ),
        (
            interval("'1 s'"),
            6,
            &["`spec.bucket.fillInterval`", "not a duration"],
        ),
        (
            interval("ms"),
            6,
            &["`spec.bucket.fillInterval`", "not a duration"],
        ),
        (
            interval("1000"),
            6,
            &["`spec.bucket.fillInterval`", "\"1000\" is not a duration"],
        ),
        (
            interval("49ms"),
            6,
            &[
                "`spec.bucket.fillInterval`",
                "shorter than the minimum of 50ms",
            ],
        ),
        (
            interval("0s"),
            6,
            &["`spec.bucket.fillInterval`", "shorter than the minimum"],
        ),
        (
            interval("1441m"),
            6,
            &[
                "`spec.bucket.fillInterval`",
                "longer than the maximum of 24h",
            ],
        ),
        (
            interval("99999999999999999999m"),
            6,
            &["`spec.bucket.fillInterval`", "not a duration"],
        ),
        (
            counts("0", "1"),
            6,
            &["`spec.bucket.maxTokens`", "0 is not a whole number from 1"],
        ),
        (
            counts("1", "0"),
            6,
            &[
                "`spec.bucket.tokensPerFill`",
                "0 is not a whole number from 1",
            ],
        ),
        (
            counts("-3", "1"),
            6,
            &["`spec.bucket.maxTokens`", "-3 is not a whole number"],
        ),
        (
            counts("4294967296", "1"),
            6,
            &["`spec.bucket.maxTokens`", "4294967296"],
        ),
        (
            counts("'10'", "1"),
            6,
            &["`spec.bucket.maxTokens`", "invalid type: string"],
        ),
        (
            bucket("tokensPerFill: 1, fillInterval: 1s"),
            1,
            &["`spec.bucket.maxTokens`", "is required"],
        ),
        (
            bucket("maxTokens: 1, tokensPerFill: 1"),
            1,
            &["`spec.bucket.fillInterval`", "is required"],
        ),
        (
            rate_policy("r", &[RATE_BUCKET]),
            1,
            &["`spec.limit`", "is required"],
        ),
        (
            rate_policy("r", &["limit: requests"]),
            1,
            &["`spec.bucket`", "is required"],
        ),
        (
            rate_policy("r", &[]).replace("spec:\n", ""),
            1,
            &["`spec`", "is required"],
        ),
        (
            rate_policy("r", &["limit: calls", RATE_BUCKET]),
            5,
            &["`spec.limit`", "unknown variant `calls`", "connections"],
        ),
        (
            requests("per: everyone"),
            7,
            &["`spec.per`", "unknown variant `everyone`"],
        ),
        (
            requests("mode: dryrun"),
            7,
            &["`spec.mode`", "unknown variant `dryrun`"],
        ),
        (
            connections("match: {methods: [GET]}"),
            1,
            &[
                "`spec.match.methods`",
                "only allowed with `limit: requests`",
            ],
        ),
        (
            connections("match: {ports: [8080], paths: [/api]}"),
            1,
            &["`spec.match.paths`", "only allowed with `limit: requests`"],
        ),
        (requests("match: {}"), 1, &["`spec.match`", "sets no field"]),
        (
            requests("match: {principals: []}"),
            1,
            &["`spec.match`", "sets no field"],
        ),
        (
            requests("match: {paths: [/a/../b]}"),
            7,
            &["`spec.match.paths[0]`"],
        ),
        (
            requests("match: {principals: ['spiffe://cluster.local/ns/a/sa/b']}"),
            7,
            &["`spec.match.principals[0]`", "without `spiffe://`"],
        ),
        (
            requests("match: {principals: [frontend]}"),
            7,
            &["`spec.match.principals[0]`", "not a principal"],
        ),
        (
            requests("match: {ports: [0]}"),
            7,
            &["`spec.match.ports[0]`", "between 1 and 65535"],
        ),
        (
            requests("limit: connections"),
            5,
            &["field `spec`", "duplicate field `limit`"],
        ),
        (
            requests("").replace("nodeward.io/v1alpha1", "security.istio.io/v1"),
            1,
            &[
                "unsupported apiVersion \"security.istio.io/v1\" for RateLimitPolicy; \
               expected nodeward.io/v1alpha1",
            ],
        ),
        (
            policy("p", "ALLOW", "[{}]").replace("security.istio.io/v1", "nodeward.io/v1alpha1"),
            1,
            &["unsupported apiVersion \"nodeward.io/v1alpha1\" for AuthorizationPolicy"],
        ),
        (
            requests("").replace(", namespace: shop", ""),
            1,
            &["`metadata.namespace`", "is required"],
        ),
    ];
    for (yaml, line, pieces) in &cases {
        let err = load_err(yaml);
        let prefix = format!("{FILE}:{line}: document 1");
        assert!(
            err.starts_with(&prefix),
            "want {prefix:?}, got: {err}\n{yaml}"
        );
        for piece in *pieces {
            assert!(err.contains(piece), "want {piece:?} in: {err}\n{yaml}");
        }
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn duplicate_rate_limit_policies_are_refused() {
    let one = rate_policy("r", &["limit: requests", RATE_BUCKET]);
    let err = load_err(&format!("{one}{one}"));
    assert_eq!(
        err,
        "policies/test.yaml:8: document 2 (RateLimitPolicy shop/r): \
         duplicate RateLimitPolicy shop/r; first defined at policies/test.yaml:1"
    );
    // The same name in another kind is another resource.
    let set = load(&(one + &policy("r", "ALLOW", "[{}]")));
    assert_eq!(set.summary().rate_limits, 1);
}

#[test]
fn rate_limit_policies_are_counted_and_listed() {
    let yaml = policy("p", "ALLOW", "[{}]")
        + &rate_policy("r", &["limit: requests", RATE_BUCKET])
        + &rate_policy("s", &["limit: connections", RATE_BUCKET, "mode: shadow"]);
    let set = load(&yaml);
    assert_eq!(
        set.summary().to_string(),
        "1 file, 1 AuthorizationPolicy (1 ALLOW, 0 DENY, 0 AUDIT), 0 PeerAuthentications, \
         2 RateLimitPolicies"
    );
    let infos: Vec<PolicyInfo<'_>> = set.policies().collect();
    let rate: Vec<_> = infos[1..]
        .iter()
        .map(|i| (i.kind, i.name, i.action, i.line))
        .collect();
    assert_eq!(
        rate,
        [
            (PolicyKind::RateLimitPolicy, "r", None, 9),
            (PolicyKind::RateLimitPolicy, "s", None, 16),
        ]
    );
    assert_eq!(
        serde_json::to_value(infos[1]).expect("json")["kind"],
        "RateLimitPolicy"
    );
    assert_eq!(
        serde_json::to_value(set.summary()).expect("json")["rateLimits"],
        2
    );
}

#[test]
fn rate_limits_for_lists_what_would_apply() {
    let selector = "selector: {matchLabels: {app: backend}}";
    let yaml = rate_policy(
        "conns",
        &[selector, "limit: connections", RATE_BUCKET, "per: shared"],
    ) + &rate_policy(
        "gets",
        &[
            selector,
            "limit: requests",
            RATE_BUCKET,
            "match: {methods: [GET]}",
            "mode: shadow",
        ],
    ) + &rate_policy(
        "posts",
        &[
            selector,
            "limit: requests",
            RATE_BUCKET,
            "match: {methods: [POST]}",
        ],
    ) + &rate_policy(
        "cache",
        &[
            "selector: {matchLabels: {app: cache}}",
            "limit: connections",
            RATE_BUCKET,
        ],
    );
    let set = load(&yaml);
    assert_eq!(rate_limit_names(&set, GET, false), ["shop/conns"]);
    assert_eq!(
        rate_limit_names(&set, GET, true),
        ["shop/conns", "shop/gets"]
    );
    let post = Call {
        method: "POST",
        ..GET
    };
    assert_eq!(
        rate_limit_names(&set, post, true),
        ["shop/conns", "shop/posts"]
    );
    let infos = GET.with(|conn, req| set.rate_limits_for(conn, Some(req)));
    assert_eq!(
        serde_json::to_value(&infos).expect("json"),
        serde_json::json!([
            {"policy": "shop/conns", "limit": "connections", "maxTokens": 10, "tokensPerFill": 5,
             "fillIntervalMs": 1000, "per": "shared", "mode": "enforce"},
            {"policy": "shop/gets", "limit": "requests", "maxTokens": 10, "tokensPerFill": 5,
             "fillIntervalMs": 1000, "per": "source", "mode": "shadow"},
        ])
    );
    // A set that failed closed has no limits to apply.
    let closed = PolicySet::deny_all(Settings::default());
    assert!(rate_limit_names(&closed, GET, true).is_empty());
}

/// `policies/ratelimit.yaml` means what its comments say.
#[test]
fn example_rate_limits_apply_as_commented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let set = PolicySet::load_dir(&dir, Settings::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rate_limit_names(&set, GET, true), ["shop/backend-api"]);
    assert!(rate_limit_names(&set, GET, false).is_empty());
    let admin = Call {
        principal: Some(OPS_TOOL),
        path: "/admin/users",
        ..GET
    };
    assert_eq!(
        rate_limit_names(&set, admin, true),
        ["shop/backend-admin-trial"]
    );
    let to_cache = Call {
        name: "cache",
        app: "cache",
        port: 9000,
        ..GET
    };
    assert_eq!(
        rate_limit_names(&set, to_cache, false),
        ["shop/cache-connections"]
    );
    let infos = GET.with(|conn, req| set.rate_limits_for(conn, Some(req)));
    let info = &infos[0];
    assert_eq!(
        (
            info.limit,
            info.max_tokens,
            info.tokens_per_fill,
            info.fill_interval_ms
        ),
        (LimitKind::Requests, 5, 5, 1000)
    );
    assert_eq!(
        (info.per, info.mode),
        (LimitPer::Source, LimitMode::Enforce)
    );
}

#[test]
fn explain_reports_a_refused_token_as_a_deny_with_its_reason() {
    use crate::{
        jwt::tests::{allow, claims, load, request_authn, rsa, rule_with, with},
        tool::{explain, Callee, ExplainArgs},
    };
    use serde_json::json;
    use std::time::{SystemTime, UNIX_EPOCH};
    let key = rsa(1);
    let yaml = request_authn(&rule_with(&key, ""))
        + &allow("from: [{source: {requestPrincipals: ['*']}}]");
    let set = load(&yaml).expect("loads");
    let real_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let args = |token: &str| ExplainArgs {
        principal: None,
        source_ip: None,
        to: Callee {
            namespace: "shop".into(),
            name: "cart".into(),
            labels: BTreeMap::from([("app".to_owned(), "cart".to_owned())]),
            port: 8080,
        },
        method: None,
        path: None,
        host: None,
        headers: vec![format!("authorization=Bearer {token}")],
    };
    let at = |exp: u64| {
        with(
            with(claims(), "nbf", json!(real_now - 7200)),
            "exp",
            json!(exp),
        )
    };
    let expired = key.sign("k", &at(real_now - 3600));
    let out = explain(&set, &args(&expired)).expect("explains");
    assert_eq!(out["decision"], "deny", "{out}");
    let reason = out["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("expired") && reason.contains("401"),
        "{out}"
    );
    let valid = key.sign("k", &at(real_now + 3600));
    let out = explain(&set, &args(&valid)).expect("explains");
    assert_eq!(out["decision"], "allow", "{out}");
}

/// A policy file of 16 kB whose anchors nest (the "billion laughs"
/// shape): 1000 rules of 1000 operations of 2000 paths once expanded.
#[test]
fn a_policy_file_whose_aliases_expand_past_the_budget_is_refused() {
    let paths = vec!["/a"; 2000].join(",");
    let rules = format!(
        "[&r {{to: [&o {{operation: {{paths: [{paths}]}}}}{}]}}{}]",
        ",*o".repeat(999),
        ",*r".repeat(999)
    );
    let sources = [(
        PathBuf::from("laughs.yaml"),
        policy("laughs", "DENY", &rules),
    )];
    let err = PolicySet::from_sources(&sources, Settings::default())
        .expect_err("expansion")
        .to_string();
    assert!(err.starts_with("laughs.yaml:"), "{err}");
    assert!(err.contains("aliases expand"), "{err}");
}

/// Rules nested 10 000 lists deep: refused at the first wrong type,
/// without recursing into the rest.
#[test]
fn a_deeply_nested_policy_is_an_error_naming_the_field() {
    let depth = 10_000;
    let rules = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
    let sources = [(PathBuf::from("deep.yaml"), policy("deep", "DENY", &rules))];
    let err = PolicySet::from_sources(&sources, Settings::default())
        .expect_err("deep")
        .to_string();
    assert!(err.starts_with("deep.yaml:"), "{err}");
    assert!(err.contains("spec.rules[0]"), "{err}");
}
