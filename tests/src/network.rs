//! Wiring the cluster's network namespaces: each node's netns with a bridge
//! for its pods, the veth link between the nodes with routes to each other's
//! pod CIDRs, and each pod's netns on its node's bridge (with the pod's
//! cgroup). Nothing is added to the root network namespace.

use anyhow::Result;

use crate::{
    cgroups,
    cluster::{node_index, Cluster, NodeSpec, PodSpec, NODES},
    netns::{self, ip},
};

impl Cluster {
    /// Builds both nodes, the link between them and every pod.
    pub(crate) fn build_network(&mut self) -> Result<()> {
        for node in NODES {
            self.add_node(&node)?;
        }
        self.link_nodes()?;
        for node in NODES {
            cgroups::create(&self.node_cgroup(node.name))?;
        }
        for pod in self.pods.clone() {
            self.add_pod(&pod)?;
        }
        Ok(())
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
