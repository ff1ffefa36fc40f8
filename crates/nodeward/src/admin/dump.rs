//! `/config_dump`: what the proxy runs with, as JSON.
//!
//! Built from views that list the fields to show, never from the stored
//! types themselves, so a field added later (a key, a cgroup path) stays out
//! unless someone puts it here on purpose. Certificates appear as their
//! identity and expiry only.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use nodeward_identity::SpiffeId;
use nodeward_policy::{PolicyInfo, Summary};
use nodeward_workloads::{Service, Workload};

use super::AdminState;

/// The whole dump.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    pub node: String,
    /// The default inbound mTLS mode (PeerAuthentication may override it).
    pub mtls: &'static str,
    /// A valid policy set is in force (otherwise everything is denied).
    pub policy_loaded: bool,
    pub policy_summary: Summary,
    pub workloads: Vec<WorkloadView>,
    pub services: Vec<ServiceView>,
    pub policies: Vec<PolicyView>,
    pub identities: Vec<IdentityView>,
}

/// A workload, without its cgroup.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Enrolled in the mesh (`mesh: false` in the workloads file: not).
    pub enrolled: bool,
}

/// A Service: VIPs, port → target port, and its endpoints now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: BTreeMap<u16, u16>,
    /// Each endpoint's addresses, with the workload behind them when
    /// known (`namespace/name`).
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint of a [`ServiceView`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub ips: Vec<IpAddr>,
    pub workload: Option<String>,
    /// Connections open to it through the Service.
    pub open_connections: usize,
}

/// A loaded policy, as [`PolicyInfo`] serialises it (owned, so the dump
/// does not hold the policy set).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PolicyView(serde_json::Value);

/// A local identity's current certificate: who and until when.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityView {
    pub spiffe_id: String,
    /// RFC 3339, UTC.
    pub not_after: Option<String>,
    /// Unix seconds.
    pub not_after_unix: u64,
    /// Whether the certificate is still valid at the time of the dump.
    pub valid: bool,
}

impl ConfigDump {
    /// The dump of `state` at `now`.
    pub fn of(state: &AdminState, now: SystemTime) -> Self {
        let set = state.authz.policies();
        let summary = set.summary();
        let registry = state.registry.load();
        Self {
            node: state.node.clone(),
            mtls: state.mtls.as_str(),
            policy_loaded: !summary.fail_closed,
            policy_summary: summary,
            workloads: registry
                .all()
                .iter()
                .map(|w| WorkloadView::from(&**w))
                .collect(),
            services: registry
                .services()
                .all()
                .iter()
                .map(|s| ServiceView::from(&**s))
                .collect(),
            policies: set.policies().map(PolicyView::from).collect(),
            identities: state
                .certs
                .expiries()
                .into_iter()
                .map(|(id, not_after)| IdentityView::new(&id, not_after, now))
                .collect(),
        }
    }
}

impl From<&Workload> for WorkloadView {
    fn from(w: &Workload) -> Self {
        let Workload {
            name,
            namespace,
            service_account,
            node,
            ips,
            labels,
            cgroup: _,
            enrolled,
        } = w;
        Self {
            name: name.clone(),
            namespace: namespace.clone(),
            service_account: service_account.clone(),
            node: node.clone(),
            ips: ips.clone(),
            labels: labels.clone(),
            enrolled: *enrolled,
        }
    }
}

impl From<&Service> for ServiceView {
    fn from(s: &Service) -> Self {
        Self {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            vips: s.vips.clone(),
            ports: s.ports.clone(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    ips: e.ips.clone(),
                    workload: e.workload.as_ref().map(ToString::to_string),
                    open_connections: e.open(),
                })
                .collect(),
        }
    }
}

impl From<PolicyInfo<'_>> for PolicyView {
    fn from(info: PolicyInfo<'_>) -> Self {
        Self(serde_json::to_value(info).unwrap_or(serde_json::Value::Null))
    }
}

impl IdentityView {
    fn new(id: &SpiffeId, not_after: SystemTime, now: SystemTime) -> Self {
        Self {
            spiffe_id: id.to_string(),
            not_after: OffsetDateTime::from(not_after).format(&Rfc3339).ok(),
            not_after_unix: not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            valid: not_after > now,
        }
    }
}
