//! A node proxy's admin port (loopback in its netns), reached with
//! `nw-pod` from inside that netns: requests, the Prometheus metrics,
//! waiting for a metric, and summing samples of Prometheus text.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroups,
    cluster::{Cluster, ADMIN_PORT},
    remote::Request,
};

impl Cluster {
    /// Runs `change` (an edit of the workloads file) and waits (up to
    /// 10 s) until both node proxies reloaded it; whether they did.
    pub fn reload_workloads(&self, change: impl FnOnce(&Self)) -> bool {
        let count = |node| {
            self.metric(
                node,
                "nodeward_workloads_reloads_total",
                &[("result", "ok")],
            )
        };
        let before = [count("node-a"), count("node-b")];
        change(self);
        let done = || count("node-a") > before[0] && count("node-b") > before[1];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        done()
    }

    /// `GET path` on a node proxy's admin port, from inside its netns:
    /// (status, headers, body).
    pub fn admin(&self, node: &str, path: &str) -> (u64, Value, String) {
        self.admin_call(node, &format!("GET {path}"))
    }

    /// `request` ("METHOD /path") on a node proxy's admin port.
    pub fn admin_call(&self, node: &str, request: &str) -> (u64, Value, String) {
        let cg = self.cgroup_root.join(format!("admin-probe-{node}"));
        cgroups::create(&cg).expect("probe cgroup");
        let to = format!("127.0.0.1:{ADMIN_PORT}");
        let args = ["http-requests", "--to", &to, "--request", request];
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let r = self.tool_in(&self.ns(node), &cg, &args);
        (
            r["statuses"][0].as_u64().unwrap_or(0),
            r["headers"][0].clone(),
            r["bodies"][0].as_str().unwrap_or("").to_owned(),
        )
    }

    /// A node proxy's Prometheus text, fetched from inside its netns.
    pub fn metrics(&self, node: &str) -> String {
        let metrics = || Request::Metrics {
            node: node.to_owned(),
        };
        if let Some(reply) = self.ask_remote(node, metrics) {
            return reply.text;
        }
        let out = Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(self.ns(node))
            .args([
                "http-get",
                "--addr",
                &format!("127.0.0.1:{ADMIN_PORT}"),
                "--path",
                "/metrics",
            ])
            .output()
            .expect("run nw-pod http-get");
        assert!(
            out.status.success(),
            "metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sum of the samples of `name` whose labels include every `k="v"` in `labels`.
    pub fn metric(&self, node: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(node), name, labels)
    }

    /// Waits (up to `timeout`) until `node`'s metric reaches `at_least`;
    /// returns the last value read.
    pub fn wait_metric(
        &self,
        node: &str,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(node, name, labels);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Parses Prometheus text and sums the matching samples.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
