//! A throwaway Kubernetes-like cluster built from network namespaces.
//!
//! Two nodes (`node-a`, `node-b`), each a netns with a bridge for its pods and
//! a veth link to the other node; four pods, each a netns with a veth on its
//! node's bridge and its own cgroup v2 directory below its node's cgroup. A
//! real `nodeward` runs in each node netns with its BPF programs attached to
//! the node cgroup. Nothing is added to the root network namespace.
//!
//! The harness owns, per test, one such cluster ([`Cluster::start`]):
//! - every name (netns, cgroups, the directory under the temp dir with
//!   configs, CAs, policies, logs and a private bpffs) starts with a unique
//!   prefix that embeds the creating pid ([`Cluster::unique_prefix`]), so
//!   clusters run in parallel;
//! - dropping the cluster tears it all down, also when the test panics
//!   (processes first, then cgroups, namespaces and mounts; the directory
//!   is kept on panic or with `NW_KEEP_LOGS`, for its logs);
//! - [`sweep`], run whenever a cluster starts, removes what killed runs
//!   left behind (prefixes whose pid is gone).
//!
//! Modules, in layers: each uses only modules listed before it (methods of
//! [`Cluster`] included), never one after it:
//! - `command`: running a helper command to completion;
//! - [`apiserver`]: a Kubernetes API server speaking list/watch (uses no
//!   other module);
//! - `cgroups`: cgroup2 mount, creating, joining, killing and removing cgroups;
//! - `netns`: named network namespaces through `ip` and `setns`;
//! - `capture`: packet capture on an interface of a netns;
//! - `certificates`: the root and node CAs, made with `nodeward ca`;
//! - [`remote`]: the requests a harness sends to the agent running the
//!   other node in another machine (uses no other module);
//! - `programs`: what `nw-pod`, `nw-bench` and `nw-demo` share;
//! - `cluster`: topology, the [`Cluster`] value, names, addresses, removal, sweep;
//! - `config`: node configs and the workloads file;
//! - `network`: wiring the namespaces of nodes and pods;
//! - `kubernetes`: the in-test API server of a `discovery: kubernetes` cluster;
//! - `logs`: log files of the cluster's processes;
//! - `processes`: node proxies and `nw-pod` servers;
//! - `traffic`: `nw-pod` clients (calls, HTTP requests);
//! - `admin`: a proxy's admin port and metrics;
//! - `policies`: the shared policy directory;
//! - `lifecycle`: starting a cluster (or this machine's half of one),
//!   tearing it down on drop;
//! - [`agent`]: `nw-vm-node`, which runs the other machine's half of each
//!   cluster a harness starts and answers its requests;
//! - [`otlp`]: an OTLP receiver (HTTP/protobuf and gRPC) for the tracing
//!   tests and the bench;
//! - [`bench`](mod@bench): the benchmark `nw-bench run` drives;
//! - [`soak`]: the long run `nw-bench soak` drives (uses `bench`'s helpers);
//! - [`tlspeer`]: a tunnel peer of the tests' own making (node CAs that
//!   mint leaves, a client config presenting one), using no other module;
//! - [`h2raw`]: HTTP/2 frames written by hand, for hostile peers (uses no
//!   other module).

mod admin;
mod capture;
mod certificates;
mod cgroups;
mod cluster;
mod command;
mod config;
mod kubernetes;
mod lifecycle;
mod logs;
mod netns;
mod network;
mod policies;
mod processes;
mod programs;
mod traffic;

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod h2raw;
pub mod jwt;
pub mod otlp;
pub mod remote;
pub mod soak;
pub mod tlspeer;

pub use admin::metric_value;
pub use capture::{Capture, Captured};
pub use cgroups::cgroup2_mount;
pub use cluster::{
    release_mounts, standard_pods, sweep, sweep_prefix, teardown, Binaries, Cluster, NodeSpec,
    Options, PodSpec, ADMIN_PORT, ALLOW_ALL, MESH_CIDRS, OUTBOUND_PORT,
};
pub use lifecycle::require_root;
pub use logs::wait_for;
pub use netns::connect_from;
pub use programs::{join, payload, print_flush, JoinArgs};
pub use traffic::finish_tool;
