//! nodeward: an eBPF-accelerated, node-level transparent proxy for Kubernetes.
//!
//! The binary is a thin shell over this library: [`config`] reads the node's
//! settings, [`workloads`] says who is who, [`redirect`] loads the kernel
//! programs that hand meshed connections to the proxy, [`outbound`] relays
//! them, [`identity`] mints every local workload's SPIFFE certificate,
//! [`tls`] verifies peers, [`tunnel`] carries cross-node connections over
//! mTLS, [`policy`] reads and evaluates authorization policies, [`authz`]
//! enforces them (with [`http`] for per-request decisions) and audits,
//! [`control`] keeps state current, and [`metrics`]/[`admin`] make all of it
//! visible.
#![deny(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod ratelimit;
pub mod redirect;
pub mod relay;
pub mod run;
pub mod sink;
pub mod tls;
pub mod tunnel;
pub mod workloads;
mod yaml;
