//! Test traffic: `nw-pod` clients run to completion from a pod (or from
//! its netns outside the mesh cgroup) — TCP calls, HTTP requests, streams
//! of calls in the background — each reporting what happened as JSON.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{cgroups, cluster::Cluster};

impl Cluster {
    /// From `pod`: sends `requests` (`"METHOD /path"`) one after another on
    /// one HTTP/1.1 connection to `to`; returns the tool's report, with
    /// `statuses` (0 where no response came).
    pub fn http_calls(&self, pod: &str, to: SocketAddr, requests: &[&str]) -> Value {
        self.http_calls_paced(pod, to, requests, 0)
    }

    /// As [`Cluster::http_calls`], pausing `gap_ms` between requests.
    pub fn http_calls_paced(
        &self,
        pod: &str,
        to: SocketAddr,
        requests: &[&str],
        gap_ms: u64,
    ) -> Value {
        let mut args = vec![
            "http-requests".to_owned(),
            "--to".to_owned(),
            to.to_string(),
            "--gap-ms".to_owned(),
            gap_ms.to_string(),
        ];
        for r in requests {
            args.push("--request".to_owned());
            args.push((*r).to_owned());
        }
        self.pod_tool(pod, &args)
    }

    /// From `pod`: connect to `to`, send `bytes`, half-close, read the echo.
    pub fn call(&self, pod: &str, to: SocketAddr, bytes: usize) -> Value {
        self.pod_tool(pod, &call_args(to, bytes, 1))
    }

    /// One call from network namespace `ns` in `cgroup`, which need not be
    /// a pod's pair (a process of the node's own namespace placed in a
    /// pod's cgroup, say); its JSON report.
    pub fn call_in(&self, ns: &str, cgroup: &Path, to: SocketAddr, bytes: usize) -> Value {
        self.tool_in(ns, cgroup, &call_args(to, bytes, 1))
    }

    /// From `pod`: `count` sequential short calls; returns how many were intact.
    pub fn call_many(&self, pod: &str, to: SocketAddr, bytes: usize, count: usize) -> u64 {
        let v = self.pod_tool(pod, &call_args(to, bytes, count));
        v["intact"].as_u64().expect("intact count")
    }

    /// From `pod`: one call with extra `nw-pod call` flags (`--chunks`,
    /// `--pace-ms`, `--marker`).
    pub fn call_with(&self, pod: &str, to: SocketAddr, bytes: usize, extra: &[&str]) -> Value {
        let mut args = call_args(to, bytes, 1);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.pod_tool(pod, &args)
    }

    /// From `pod`: `count` sequential calls with extra `nw-pod call` flags;
    /// how many were intact.
    pub fn call_many_with(
        &self,
        pod: &str,
        to: SocketAddr,
        bytes: usize,
        count: usize,
        extra: &[&str],
    ) -> u64 {
        let mut args = call_args(to, bytes, count);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let v = self.pod_tool(pod, &args);
        v["intact"].as_u64().expect("intact count")
    }

    /// Starts one call from `pod` with extra `nw-pod call` flags in the
    /// background; [`finish_tool`] collects the report.
    pub fn spawn_call_with(
        &self,
        pod: &str,
        to: SocketAddr,
        bytes: usize,
        extra: &[&str],
    ) -> Child {
        let mut args = call_args(to, bytes, 1);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.spawn_tool(pod, &args)
    }

    /// From `pod`'s network namespace and the cgroup `cgroup` (a
    /// container's, below the pod's; created if missing): one call.
    pub fn call_in_cgroup(&self, pod: &str, cgroup: &Path, to: SocketAddr, bytes: usize) -> Value {
        cgroups::create(cgroup).expect("container cgroup");
        self.tool_in(&self.ns(pod), cgroup, &call_args(to, bytes, 1))
    }

    /// From `pod`'s network namespace but outside the mesh cgroup, so the
    /// connection is not redirected: a pod bypassing its proxy.
    pub fn call_bypassing_proxy(&self, pod: &str, to: SocketAddr, bytes: usize) -> Value {
        let cg = self.cgroup_root.join(format!("bypass-{pod}"));
        cgroups::create(&cg).expect("bypass cgroup");
        self.tool_in(&self.ns(pod), &cg, &call_args(to, bytes, 1))
    }

    /// Starts `count` short calls from `pod` to `to`, `gap_ms` apart, in
    /// the background; [`finish_tool`] collects the report.
    pub fn spawn_call_stream(&self, pod: &str, to: SocketAddr, count: usize, gap_ms: u64) -> Child {
        let mut args = call_args(to, 200, count);
        args.extend(["--gap-ms".to_owned(), gap_ms.to_string()]);
        self.spawn_tool(pod, &args)
    }

    /// From `pod`: `nw-pod pipe` to `to`, with stdin and stdout piped: what
    /// the test writes to its stdin goes to `to` as raw bytes, what comes
    /// back appears on its stdout. Kill it to end the connection.
    pub fn pipe(&self, pod: &str, to: SocketAddr) -> Child {
        let p = self.pod(pod);
        Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(self.ns(pod))
            .arg("--cgroup")
            .arg(self.pod_cgroup(p))
            .args(["pipe", "--to", &to.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nw-pod pipe")
    }

    /// Starts `nw-pod <args>` in `pod` in the background.
    fn spawn_tool(&self, pod: &str, args: &[String]) -> Child {
        let p = self.pod(pod);
        Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(self.ns(pod))
            .arg("--cgroup")
            .arg(self.pod_cgroup(p))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nw-pod")
    }

    /// Runs `nw-pod <args>` in `pod` (its netns and cgroup); its JSON report.
    fn pod_tool(&self, pod: &str, args: &[String]) -> Value {
        let p = self.pod(pod);
        self.tool_in(&self.ns(pod), &self.pod_cgroup(p), args)
    }

    /// Runs `nw-pod <args>` in netns `ns` and `cgroup`, which must succeed;
    /// its JSON report.
    pub(crate) fn tool_in(&self, ns: &str, cgroup: &Path, args: &[String]) -> Value {
        let out = Command::new(&self.bins.nw_pod)
            .arg("--netns")
            .arg(ns)
            .arg("--cgroup")
            .arg(cgroup)
            .args(args)
            .output()
            .expect("run nw-pod");
        assert!(
            out.status.success(),
            "nw-pod {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "nw-pod output {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Arguments of `nw-pod call`.
fn call_args(to: SocketAddr, bytes: usize, count: usize) -> Vec<String> {
    [
        "call",
        "--to",
        &to.to_string(),
        "--send",
        &bytes.to_string(),
        "--count",
        &count.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Waits for a background `nw-pod` tool and parses its JSON report.
pub fn finish_tool(child: Child) -> Value {
    let out = child.wait_with_output().expect("wait for nw-pod");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nw-pod output {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
