//! What the proxies read besides policies and certificates: each node's
//! config file (from the cluster's `Options`) and the shared workloads
//! file (nodes and pods, with a test's relabelled or unlisted pods), both
//! rewritten when a test changes them.

use std::fs;

use anyhow::Result;

use crate::cluster::{Cluster, NodeSpec, PodSpec, ADMIN_PORT, MESH_CIDRS, NODES, OUTBOUND_PORT};

impl Cluster {
    /// Rewrites the workloads file from `self.pods` (proxies reload it).
    pub fn write_workloads(&self) -> Result<()> {
        let mut w = String::from("nodes:\n");
        for node in NODES {
            w += &format!(
                "  - {{name: {}, address: {}}}\n",
                node.name,
                self.node_ip(node.name)
            );
        }
        w += "workloads:\n";
        let labels = self
            .app_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unlisted = self
            .unlisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unenrolled = self
            .unenrolled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in self.pods.iter().filter(|p| !unlisted.contains(p.name)) {
            w += &self.workload_entry(p, labels.get(p.name).map_or(p.name, String::as_str));
            if unenrolled.contains(p.name) {
                w += "    mesh: false\n";
            }
        }
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if !services.is_empty() {
            w += "services:\n";
            w += &services;
        }
        // Write then rename, so a proxy never reads half a file.
        let tmp = self.dir.join("workloads.yaml.tmp");
        fs::write(&tmp, w)?;
        fs::rename(tmp, self.dir.join("workloads.yaml"))?;
        Ok(())
    }

    /// Pod `p`'s entry in the workloads file, labelled `app: <app>`.
    fn workload_entry(&self, p: &PodSpec, app: &str) -> String {
        format!(
            "  - name: {}\n    namespace: {}\n    serviceAccount: {}\n    node: {}\n    ips: [{}, '{}']\n    labels: {{app: {}}}\n    cgroup: {}\n",
            p.name, p.namespace, p.service_account, p.node, self.ip4(p.name), self.ip6(p.name),
            app,
            self.pod_cgroup(p).display()
        )
    }

    /// Gives `pod` the label `app: <app>` instead of its name and rewrites
    /// the workloads file (the proxies reload it within a second).
    pub fn relabel(&self, pod: &str, app: &str) {
        self.app_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned(), app.to_owned());
        self.write_workloads().expect("write workloads");
    }

    /// Takes a pod out of the workloads file (as when it is deleted), while
    /// its netns and cgroup stay until teardown.
    pub fn unlist(&self, pod: &str) {
        self.unlisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned());
        self.write_workloads().expect("write workloads");
    }

    /// Lists `pod` with `mesh: false` (not enrolled) and rewrites the
    /// workloads file.
    pub fn unenroll(&self, pod: &str) {
        self.unenrolled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned());
        self.write_workloads().expect("write workloads");
    }

    /// Makes `items` (YAML list items) the workloads file's `services:`
    /// and rewrites it.
    pub fn set_services(&self, items: &str) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) = items.to_owned();
        self.write_workloads().expect("write workloads");
    }

    /// Rewrites both nodes' configs with `sockmap.enabled: on`; takes
    /// effect when a proxy next starts.
    pub fn set_sockmap(&mut self, on: bool) -> Result<()> {
        self.options.sockmap = on;
        self.write_configs()
    }

    /// Rewrites both config files with `flows.enabled: on` (takes effect
    /// when the proxies restart).
    pub fn set_flows(&mut self, on: bool) -> Result<()> {
        self.options.flows = on;
        self.write_configs()
    }

    /// Writes both nodes' config files.
    pub(crate) fn write_configs(&self) -> Result<()> {
        for node in NODES {
            fs::write(self.config_path(node.name), self.node_config(&node))?;
        }
        Ok(())
    }

    /// The config file of `node`'s proxy, with the cluster's `Options`.
    fn node_config(&self, node: &NodeSpec) -> String {
        let (i, options) = (node.index, &self.options);
        let tunnel = match options.tunnel {
            "" => String::new(),
            t => format!("tunnel: {t}\n"),
        } + &match options.http {
            "" => String::new(),
            h => format!("http: {h}\n"),
        };
        let tunnel = match options.tracing.as_str() {
            "" => tunnel,
            t => format!("{tunnel}tracing: {t}\n"),
        };
        let tunnel = match options.worker_threads {
            None => tunnel,
            Some(n) => format!("{tunnel}runtime:\n  workerThreads: {n}\n"),
        };
        let discovery = if options.kubernetes {
            format!(
                "discovery: kubernetes\nkubernetes:\n  cgroupRoot: {}\n  syncTimeout: 15s\n",
                self.node_cgroup(node.name).display()
            )
        } else {
            "workloadsFile: workloads.yaml\n".to_owned()
        };
        tunnel + &discovery + &format!(
            "node: {}\npodCgroup: {}\nmeshCidrs: ['{}', '{}']\nproxyAddresses:\n  ipv4: 10.20.{i}.1\n  ipv6: 'fd00:20:{i}::1'\nports:\n  outbound: {OUTBOUND_PORT}\nadmin:\n  address: 127.0.0.1:{ADMIN_PORT}\nidentity:\n  dir: ca/{}\n  certLifetime: {}\nmtls: {}\npolicy:\n  dir: policies\n  defaultPolicy: {}\nbpf:\n  pinDir: {}\nlifecycle:\n  drainDeadline: {}\nsockmap:\n  enabled: {}\nflows:\n  enabled: {}\n",
            node.name,
            self.node_cgroup(node.name).display(),
            MESH_CIDRS[0],
            MESH_CIDRS[1],
            node.name,
            options.cert_lifetime,
            options.mtls,
            options.default_policy,
            self.bpffs().join(node.name).display(),
            options.drain_deadline,
            options.sockmap,
            options.flows,
        )
    }
}
