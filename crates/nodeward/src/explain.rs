//! `nodeward policy explain`'s inputs, resolved: the caller's SPIFFE ID is
//! validated and a callee given by IP is looked up in a workloads file.
//! The evaluation itself is `nodeward_policy::tool`, so a pipeline tests
//! exactly what the proxy enforces.

use std::{net::SocketAddr, path::PathBuf};

use nodeward_identity::SpiffeId;
use nodeward_policy::tool::{Callee, ToolError};
use nodeward_workloads::Registry;

/// Which workload is being called, as the command line gives it.
pub enum Target {
    /// A workload from a workloads file, by IP.
    Workload { workloads: PathBuf, to: SocketAddr },
    /// A workload that need not exist yet: namespace, labels and port.
    Labels {
        namespace: String,
        labels: String,
        port: u16,
    },
}

/// The caller: a SPIFFE ID, or `unauthenticated` (`None`).
pub fn principal(from: &str) -> Result<Option<String>, ToolError> {
    if from == "unauthenticated" {
        return Ok(None);
    }
    SpiffeId::parse(from)
        .map(|id| Some(id.as_str().to_owned()))
        .map_err(|e| ToolError::Argument(format!("--from {from:?}: {e}")))
}

/// The callee's namespace, name, labels and port.
pub fn callee(to: &Target) -> Result<Callee, ToolError> {
    match to {
        Target::Workload { workloads, to } => {
            let registry = Registry::load_detached(workloads)
                .map_err(|e| ToolError::Argument(format!("--workloads: {e}")))?;
            let w = registry.by_ip(to.ip()).ok_or_else(|| {
                ToolError::Argument(format!("--to {to}: no workload has this IP"))
            })?;
            Ok(Callee {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                labels: w.labels.clone(),
                port: to.port(),
            })
        }
        Target::Labels {
            namespace,
            labels,
            port,
        } => Ok(Callee {
            namespace: namespace.clone(),
            name: String::new(),
            labels: nodeward_policy::tool::parse_labels(labels)?,
            port: *port,
        }),
    }
}
