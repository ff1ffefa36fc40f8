//! Workload identity: SPIFFE IDs, the offline root/node CA tooling, minting
//! of X.509-SVIDs by a node's intermediate CA, the strict SPIFFE verifier
//! ([`tls`]) and the tunnel's rustls configurations ([`tls_config`]).
//!
//! Trust is two-level: one root per trust domain (kept offline, used by
//! `ca init`/`ca issue-node`), and one intermediate per node whose URI SAN
//! names the node. Every SVID is signed by its node's intermediate, so a
//! verifier learns both *who* the peer is and *which node vouched for it*.

//!
//! Owns: who a workload or node is, and how that is proven and checked in
//! a TLS handshake. Must not know: sockets, async runtimes, HTTP, metrics,
//! policies, or where the list of workloads comes from (callers hand it the
//! identities to mint).
#![forbid(unsafe_code)]

pub mod ca;
pub mod mint;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod tls_config;

pub use ca::{CaError, CaFiles, NodeFiles};
pub use mint::{NodeCa, Svid};
pub use spiffe::{
    trust_domain_from_uri, trust_domain_uri, validate_node_name, validate_trust_domain, SpiffeId,
    SpiffeIdError, DEFAULT_TRUST_DOMAIN,
};
pub use store::{CertStore, Issued};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
