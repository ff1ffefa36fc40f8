//! A cluster's life as a whole: whether this process may build one
//! ([`require_root`]), starting one (sweeping dead runs' leftovers, then
//! directory, bpffs, network, certificates, workloads, policies, configs,
//! and both node proxies), and tearing it down on drop (processes first,
//! then what the cluster built). The top layer: it composes the others.

use std::{path::Path, time::Duration};

use anyhow::Result;

use crate::{
    certificates::make_ca,
    cluster::{standard_pods, sweep, Cluster, Options, PodSpec, NODES},
    processes::patience,
    remote::{Request, Split},
};

/// True when the process may create namespaces, cgroups and BPF links.
/// Without root: in CI this panics (a skipped e2e suite must not pass), locally it says so.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: end-to-end tests need root (netns, cgroups, eBPF); CI must run them as root"
        );
    }
    eprintln!("SKIPPED {test}: needs root (netns, cgroups, eBPF)");
    false
}

impl Cluster {
    /// Builds the topology and starts both node proxies.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Like [`Cluster::start`], with non-default proxy settings.
    pub fn start_with(options: Options) -> Self {
        Self::start_with_prefix(&Self::unique_prefix(), standard_pods(), options)
            .unwrap_or_else(|e| panic!("starting the test cluster: {e:#}"))
    }

    /// Builds the topology under `prefix` and starts both node proxies.
    pub fn start_with_prefix(prefix: &str, pods: Vec<PodSpec>, options: Options) -> Result<Self> {
        sweep();
        let mut c = Self::new(prefix, pods, options)?;
        c.mount_bpffs()?;
        c.build_network()?;
        if c.options.kubernetes {
            c.start_api_server()?;
        }
        c.write_files()?;
        for node in c.local_nodes() {
            c.start_proxy(node.name)?;
        }
        if let Some(split) = &c.split {
            if c.options.kubernetes {
                anyhow::bail!("a cluster split over two machines reads the workloads file only");
            }
            let join = Request::Join {
                prefix: c.prefix.clone(),
                dir: c.dir.clone(),
            };
            split.ask(&join, patience(Duration::from_secs(60)))?;
        }
        Ok(c)
    }

    /// The other machine's half of a cluster `prefix` whose driver wrote
    /// its files in `dir`: this machine's node, pods and proxy.
    pub(crate) fn join(prefix: &str, dir: &Path, split: Split) -> Result<Self> {
        let mut c = Self::joining(prefix, dir, split)?;
        c.mount_bpffs()?;
        c.build_network()?;
        for node in c.local_nodes() {
            c.start_proxy(node.name)?;
        }
        Ok(c)
    }

    /// Everything the proxies read: CAs, workloads file, policies, configs.
    fn write_files(&self) -> Result<()> {
        make_ca(&self.bins.nodeward, &self.ca_dir(), &NODES.map(|n| n.name))?;
        self.write_workloads()?;
        self.install_policies()?;
        self.write_configs()
    }
}

impl Drop for Cluster {
    /// Stops every process first (a proxy gets SIGTERM and can drain), then
    /// removes cgroups, namespaces, mounts and (unless kept) the directory:
    /// also when a test panics.
    fn drop(&mut self) {
        self.stop_processes();
        if let Some(split) = self.split.as_ref().filter(|_| self.owns_dir) {
            if let Err(e) = split.ask(&Request::Leave, patience(Duration::from_secs(60))) {
                eprintln!("the other machine's half of {}: {e:#}", self.prefix);
            }
        }
        self.remove();
    }
}
