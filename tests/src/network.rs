//! Wiring the cluster's network namespaces: each node's netns with a bridge
//! for its pods, the veth link between the nodes with routes to each other's
//! pod CIDRs, and each pod's netns on its node's bridge (with the pod's
//! cgroup). Nothing is added to the root network namespace. With the other
//! node in another machine, only this machine's node, with its real NIC as
//! the link.

use std::{process::Command, time::Duration};

use anyhow::{bail, Result};

use crate::{
    cgroups,
    cluster::{node_index, Cluster, NodeSpec, PodSpec, NODES},
    command::run_cmd,
    netns::{self, ip},
    remote::Split,
};

impl Cluster {
    /// Builds both nodes, the link between them and every pod.
    /// With the other node in another machine (see `remote`), only this
    /// machine's node and pods, and its NIC on the wire as `link0`.
    pub(crate) fn build_network(&mut self) -> Result<()> {
        let local = self.local_nodes();
        for node in &local {
            self.add_node(node)?;
        }
        match self.split.clone() {
            None => self.link_nodes()?,
            Some(split) => self.adopt_link(&split)?,
        }
        for node in &local {
            cgroups::create(&self.node_cgroup(node.name))?;
        }
        for pod in self.pods.clone() {
            if self.is_local(pod.node) {
                self.add_pod(&pod)?;
            }
        }
        Ok(())
    }

    /// Moves this machine's NIC on the wire to the other machine into the
    /// local node's netns as `link0`. It comes back to the machine's own
    /// namespace when that netns is deleted (a physical device is not
    /// destroyed with it), which takes a moment: the next cluster waits.
    fn adopt_link(&self, split: &Split) -> Result<()> {
        let node = node_index(&split.local);
        let other = NODES
            .iter()
            .find(|n| n.name != split.local)
            .map_or(node, |n| n.index);
        let ns = self.ns(&split.local);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let nic = loop {
            if let Some(nic) = interface_with_mac(&split.link_mac)? {
                break nic;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "no interface with MAC {} (NW_SPLIT_LINK) in this machine",
                    split.link_mac
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        run_cmd(Command::new("ip").args(["link", "set", "dev", &nic, "netns", &ns]))?;
        ip(&ns, &["link", "set", "dev", &nic, "name", "link0"])?;
        link_end(&ns, node, other)
    }

    /// A node's netns with its pod bridge `br0` (the proxy addresses), forwarding on.
    fn add_node(&mut self, node: &NodeSpec) -> Result<()> {
        let ns = self.ns(node.name);
        self.add_netns(&ns)?;
        let i = node.index;
        ip(&ns, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &ns,
            &["addr", "add", &format!("10.20.{i}.1/24"), "dev", "br0"],
        )?;
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("fd00:20:{i}::1/64"),
                "dev",
                "br0",
                "nodad",
            ],
        )?;
        ip(&ns, &["link", "set", "br0", "up"])?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            netns::sysctl(&ns, k, v)?;
        }
        Ok(())
    }

    /// The veth `link0` between the nodes, and routes to each other's pods.
    fn link_nodes(&self) -> Result<()> {
        let (a, b) = (self.ns("node-a"), self.ns("node-b"));
        ip(
            &a,
            &[
                "link", "add", "link0", "type", "veth", "peer", "name", "link0", "netns", &b,
            ],
        )?;
        for (ns, i, other) in [(&a, 1, 2), (&b, 2, 1)] {
            link_end(ns, i, other)?;
        }
        Ok(())
    }

    /// Creates netns `ns` (recorded for teardown as soon as it exists) with `lo` up.
    fn add_netns(&mut self, ns: &str) -> Result<()> {
        netns::create(ns)?;
        self.netns.push(ns.to_owned());
        ip(ns, &["link", "set", "lo", "up"])
    }

    /// A pod: its netns, a veth on its node's bridge, addresses, routes and cgroup.
    fn add_pod(&mut self, pod: &PodSpec) -> Result<()> {
        let ns = self.ns(pod.name);
        self.add_netns(&ns)?;
        let node_ns = self.ns(pod.node);
        let host_if = format!("v-{}", pod.name.chars().take(12).collect::<String>());
        ip(
            &node_ns,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip(&node_ns, &["link", "set", &host_if, "master", "br0", "up"])?;
        address_pod(&ns, node_index(pod.node), pod.host)?;
        cgroups::create(&self.pod_cgroup(pod))?;
        Ok(())
    }

    /// Adds a pod to a running cluster and to the workloads file (the
    /// proxies pick it up on their next reload).
    pub fn add_pod_live(&mut self, pod: PodSpec) -> Result<()> {
        self.add_pod(&pod)?;
        self.pods.push(pod);
        self.write_workloads()
    }
}

/// Node `i`'s end of `link0` in `ns`: its addresses, and routes to node
/// `other`'s pods through it.
fn link_end(ns: &str, i: u8, other: u8) -> Result<()> {
    ip(
        ns,
        &["addr", "add", &format!("10.99.0.{i}/24"), "dev", "link0"],
    )?;
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("fd00:99::{i}/64"),
            "dev",
            "link0",
            "nodad",
        ],
    )?;
    ip(ns, &["link", "set", "link0", "up"])?;
    ip(
        ns,
        &[
            "route",
            "add",
            &format!("10.20.{other}.0/24"),
            "via",
            &format!("10.99.0.{other}"),
        ],
    )?;
    ip(
        ns,
        &[
            "-6",
            "route",
            "add",
            &format!("fd00:20:{other}::/64"),
            "via",
            &format!("fd00:99::{other}"),
        ],
    )?;
    Ok(())
}

/// A pod's `eth0` addresses (host `h` in node `i`'s pod CIDRs) and default
/// routes through its node's bridge.
fn address_pod(ns: &str, i: u8, h: u8) -> Result<()> {
    ip(
        ns,
        &["addr", "add", &format!("10.20.{i}.{h}/24"), "dev", "eth0"],
    )?;
    ip(
        ns,
        &[
            "addr",
            "add",
            &format!("fd00:20:{i}::{h}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    ip(ns, &["link", "set", "eth0", "up"])?;
    ip(
        ns,
        &["route", "add", "default", "via", &format!("10.20.{i}.1")],
    )?;
    ip(
        ns,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:20:{i}::1"),
        ],
    )?;
    Ok(())
}

/// The interface of this network namespace whose MAC address is `mac`.
fn interface_with_mac(mac: &str) -> Result<Option<String>> {
    for entry in std::fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
            return Ok(entry.file_name().to_str().map(str::to_owned));
        }
    }
    Ok(None)
}
