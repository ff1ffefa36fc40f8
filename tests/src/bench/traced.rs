//! The cost of tracing per HTTP request (issue 19): an HTTP echo on the
//! cross-node nodeward path, with tracing off and then on (every request
//! sampled, exported over OTLP/HTTP to a receiver in node-a's netns), in
//! the same run. Selected with `--only httptrace` (and part of a full run).

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{sock, Bench, Kind, Locality, PathSpec, REMOTE_POD};
use crate::otlp::{collector_addr, tracing_config};

/// The scenario's name for `--only`.
pub(super) const NAME: &str = "httptrace";
/// The HTTP server's port on the remote pod (`nw-pod http-serve`).
const PORT_HTTP: u16 = 8091;
/// Requests per variant (warm-up excluded).
const REQUESTS: &str = "20000";

/// A path rule makes the port HTTP-judged: every request is parsed,
/// judged and (with tracing on) traced.
const HTTP_POLICY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-http-trace, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {ports: [\"8091\"], paths: [/admin]}}]
";

/// Whether `only` asks for this scenario; the other names.
pub(super) fn split_only(only: &[String]) -> (bool, Vec<String>) {
    let wanted = only.is_empty() || only.iter().any(|n| n == NAME);
    let rest = only.iter().filter(|n| *n != NAME).cloned().collect();
    (wanted, rest)
}

impl Bench {
    /// Runs both variants; their reports, the spans the receiver got, and
    /// the traced ÷ untraced ratios.
    pub(super) fn http_tracing(&mut self) -> Result<Value> {
        self.switch_proxies(false, true)?;
        self.cluster.serve_http(REMOTE_POD, PORT_HTTP);
        self.cluster
            .write_policy("bench-http-trace.yaml", HTTP_POLICY);
        std::thread::sleep(Duration::from_secs(2));
        let path = self.http_path()?;
        eprintln!("bench: {NAME} tracing off");
        let off = self.http_echo(&path)?;
        let collector = self.cluster.start_collector();
        self.set_tracing(tracing_config(collector_addr(), "http/protobuf", 1.0))?;
        eprintln!("bench: {NAME} tracing on");
        let on = self.http_echo(&path)?;
        // Let the last batch go out before counting.
        std::thread::sleep(Duration::from_secs(2));
        let received = collector.spans().len();
        let dropped = self
            .cluster
            .metric("node-b", "nodeward_trace_spans_dropped_total", &[]);
        self.set_tracing(String::new())?;
        let ratio = |key: &str| match (on[key].as_f64(), off[key].as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => json!(a / b),
            _ => Value::Null,
        };
        let summary = json!({
            "off": off,
            "on": on,
            "spans_received": received,
            "spans_dropped_node_b": dropped,
            "traced_over_untraced": {
                "p50_us": ratio("p50_us"),
                "p99_us": ratio("p99_us"),
                "requests_per_s": ratio("requests_per_s"),
                "cpu_s_per_10k_req": ratio("cpu_s_per_10k_req"),
            },
        });
        eprintln!("bench: {NAME}: {summary}");
        Ok(summary)
    }

    /// The cross-node nodeward path, to the HTTP server.
    fn http_path(&self) -> Result<PathSpec> {
        let cross = self
            .paths()?
            .into_iter()
            .find(|p| p.kind == Kind::Nodeward && p.locality == Locality::Cross)
            .context("the cross-node nodeward path")?;
        Ok(PathSpec {
            to: sock(self.cluster.ip4(REMOTE_POD), PORT_HTTP),
            ..cross
        })
    }

    /// One variant: sequential requests on one connection.
    fn http_echo(&self, path: &PathSpec) -> Result<Value> {
        let to = path.to.to_string();
        let secs = self.settings.seconds.to_string();
        let args = [
            "http-rr",
            "--to",
            &to,
            "--requests",
            REQUESTS,
            "--seconds",
            &secs,
        ];
        let (mut v, cpu) = self.tool(path, &args)?;
        let total = v["total"].as_f64().unwrap_or(0.0);
        if let Some(cpu) = cpu {
            v["proxy_cpu_s"] = json!(cpu);
            if total > 0.0 {
                v["cpu_s_per_10k_req"] = json!(cpu / total * 10_000.0);
            }
        }
        Ok(v)
    }

    /// Restarts both proxies with this `tracing:` section (empty: off).
    fn set_tracing(&mut self, tracing: String) -> Result<()> {
        self.cluster.options.tracing = tracing;
        self.cluster.write_configs()?;
        for node in ["node-a", "node-b"] {
            self.cluster.stop_proxy(node);
            self.cluster.start_proxy(node)?;
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }
}

/// The scenario's table for the markdown report (empty when it did not run).
pub(super) fn markdown(machine: &Value) -> String {
    let Some(t) = machine.get("http_tracing") else {
        return String::new();
    };
    let cell = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
    let mut md = String::from(
        "\nHTTP echo, cross-node, one connection (`httptrace`):\n\n| | tracing off | tracing on | on ÷ off |\n|---|--:|--:|--:|\n",
    );
    for (key, label) in [
        ("p50_us", "p50 (µs)"),
        ("p99_us", "p99 (µs)"),
        ("requests_per_s", "requests/s"),
        ("cpu_s_per_10k_req", "proxy CPU s per 10k requests"),
    ] {
        md += &format!(
            "| {label} | {} | {} | {} |\n",
            cell(&t["off"][key]),
            cell(&t["on"][key]),
            cell(&t["traced_over_untraced"][key])
        );
    }
    md += &format!(
        "\nSpans received: {}; dropped on node-b: {}.\n",
        t["spans_received"], t["spans_dropped_node_b"]
    );
    // A variant that failed must not pass for a slow one.
    for variant in ["off", "on"] {
        let errors = t[variant]["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            md += &format!(
                "Tracing {variant}: {errors} errors (first: {}).\n",
                t[variant]["first_error"]
            );
        }
    }
    md
}
