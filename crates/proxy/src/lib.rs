//! nodeward's data path: everything a meshed connection passes through.
//!
//! [`outbound`] accepts the connections the kernel redirected and relays
//! them ([`relay`]) to a local pod or through the mTLS [`tunnel`] to
//! another node, whose [`inbound`] server delivers them. [`authz`] judges
//! every connection and, through [`http`], every request, enforces rate
//! limits ([`ratelimit`]) and writes the audit log; [`jwks`] fetches the
//! keys of `RequestAuthentication` rules that name a `jwksUri`. [`drain`] lets a stop
//! finish open connections. What the data path counts goes out through the
//! [`telemetry::Telemetry`] trait, and its spans through [`trace`]; who
//! talked to whom is kept per edge in the [`flows`] map.
//!
//! Owns: sockets, relaying, HTTP serving, the authorization runtime,
//! token buckets, access and audit records.
//! Must not know: the config file, the admin endpoints, prometheus or any
//! metrics library, how policies, workloads or certificates are loaded.
#![deny(unsafe_code)]

pub mod access;
pub mod authz;
pub mod balance;
pub mod drain;
pub mod escape;
pub mod flows;
pub mod http;
pub mod inbound;
pub mod jwks;
pub mod outbound;
mod random;
pub mod ratelimit;
pub mod relay;
pub mod sink;
pub mod telemetry;
pub mod trace;
pub mod tunnel;
