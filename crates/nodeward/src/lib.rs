//! nodeward, the node proxy binary: the CLI, the config file, the admin
//! endpoints and prometheus metrics, the lifecycle of a running proxy, and
//! the wiring of the layers below.
//!
//! [`config`] reads the node's settings, [`run`] starts everything:
//! the kernel programs (`nodeward-bpf`), the registry of workloads
//! (`nodeward-workloads`), certificates (`nodeward-identity`), the policy
//! set (`nodeward-policy`) and the data path (`nodeward-proxy`). [`control`]
//! and [`reload`] keep the workloads, certificates and policies current,
//! [`metrics`] implements the data path's telemetry with prometheus, and
//! [`admin`] serves it, with the flow map ([`flows`]); [`otlp`] exports the
//! data path's spans. [`lifecycle`] handles limits, shared listeners and
//! takeover; [`explain`] resolves `policy explain`'s arguments.
//!
//! Owns: everything about this process and its files. Must not own: the
//! data path itself, policy semantics, identity checks or BPF programs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod control;
pub mod explain;
pub mod flows;
pub mod lifecycle;
pub mod metrics;
pub mod otlp;
pub mod probe;
pub mod reload;
pub mod report;
pub mod run;
