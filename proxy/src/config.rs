//! The node proxy's configuration file.
//!
//! [`ConfigFile`] is the YAML format (unknown fields rejected); [`Config`] is
//! what the rest of the proxy uses, produced only by validation.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::yaml;
pub use crate::yaml::FileError as ConfigError;

/// Default outbound capture port (Istio's and ztunnel's).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default admin (metrics, health) address: loopback, so pods cannot reach it.
pub const DEFAULT_ADMIN_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);

/// The YAML configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    /// This node's name, as used in the workloads file.
    pub node: String,
    /// cgroup v2 directory the node's pods live below; relative paths are
    /// taken from the cgroup2 mount point.
    pub pod_cgroup: PathBuf,
    /// Destinations whose connections are meshed (captured).
    pub mesh_cidrs: Vec<IpNet>,
    /// Where redirected connections land.
    pub proxy_addresses: ProxyAddressesFile,
    #[serde(default)]
    pub ports: PortsFile,
    #[serde(default)]
    pub admin: AdminFile,
    /// Workloads file; relative paths are taken from the config file's directory.
    pub workloads_file: PathBuf,
}

/// `proxyAddresses`: the node proxy's addresses as pods reach them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyAddressesFile {
    pub ipv4: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

/// `ports`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortsFile {
    #[serde(default)]
    pub outbound: Option<u16>,
}

/// `admin`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminFile {
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub pod_cgroup: PathBuf,
    pub mesh_cidrs: Vec<IpNet>,
    pub proxy_ipv4: Ipv4Addr,
    pub proxy_ipv6: Option<Ipv6Addr>,
    pub outbound_port: u16,
    pub admin_addr: SocketAddr,
    pub workloads_file: PathBuf,
    /// The file this came from, for error messages.
    pub source: PathBuf,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = yaml::read(path)?;
        Self::from_file(path, file)
    }

    /// Validates a decoded file; `path` anchors relative paths and errors.
    pub fn from_file(path: &Path, file: ConfigFile) -> Result<Self, ConfigError> {
        let ConfigFile {
            node,
            pod_cgroup,
            mesh_cidrs,
            proxy_addresses: ProxyAddressesFile { ipv4, ipv6 },
            ports: PortsFile { outbound },
            admin: AdminFile { address },
            workloads_file,
        } = file;
        let bad = |field: &str, msg: &str| ConfigError::invalid(path, field, msg);
        if node.trim().is_empty() {
            return Err(bad("node", "must not be empty"));
        }
        if mesh_cidrs.is_empty() {
            return Err(bad("meshCidrs", "must list at least one CIDR"));
        }
        if ipv4.is_unspecified() || ipv4.is_broadcast() {
            return Err(bad("proxyAddresses.ipv4", "must be a unicast address"));
        }
        if ipv6.is_some_and(|a| a.is_unspecified() || a.is_multicast()) {
            return Err(bad("proxyAddresses.ipv6", "must be a unicast address"));
        }
        let outbound_port = outbound.unwrap_or(DEFAULT_OUTBOUND_PORT);
        if outbound_port == 0 {
            return Err(bad("ports.outbound", "must be between 1 and 65535"));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Self {
            node,
            pod_cgroup,
            mesh_cidrs: mesh_cidrs.into_iter().map(|c| c.trunc()).collect(),
            proxy_ipv4: ipv4,
            proxy_ipv6: ipv6,
            outbound_port,
            admin_addr: address.unwrap_or(DEFAULT_ADMIN_ADDR),
            workloads_file: base.join(workloads_file),
            source: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
