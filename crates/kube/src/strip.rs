//! What the stores keep of each object: only the fields [`crate::convert`]
//! reads. A real pod carries managed fields, annotations, container specs
//! and statuses (tens of kB each); a node lists its container images. Kept
//! whole, 10 000 pods would cost hundreds of MB. Pods, by far the most
//! numerous, are kept as a [`PodInfo`] (a `Pod` struct alone is 2.4 kB
//! even with every optional field empty); the other kinds are kept as
//! their API types with the unread fields cleared.

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeStatus, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::reflector::Lookup;

/// What nodeward reads of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (`default` when unset): its identity.
    pub service_account: String,
    /// `spec.nodeName`: unset until scheduled.
    pub node: Option<String>,
    /// `status.podIPs` (and `status.podIP`), parsed, canonical, deduplicated.
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// `status.phase` is Succeeded or Failed.
    pub finished: bool,
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> Self {
        let Pod {
            metadata,
            spec,
            status,
        } = pod;
        let spec = spec.unwrap_or_default();
        let status = status.unwrap_or_default();
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = status.pod_ips.into_iter().flatten().map(|p| p.ip);
        for ip in listed.chain(status.pod_ip) {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                let ip = ip.to_canonical();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Self {
            name: metadata.name.unwrap_or_default(),
            namespace: metadata.namespace.unwrap_or_default(),
            uid: metadata.uid.unwrap_or_default(),
            resource_version: metadata.resource_version.unwrap_or_default(),
            labels: metadata.labels.unwrap_or_default(),
            service_account: spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            node: spec.node_name.filter(|n| !n.is_empty()),
            ips,
            host_network: spec.host_network == Some(true),
            terminating: metadata.deletion_timestamp.is_some(),
            finished: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
        }
    }
}

/// What the reflector store needs to key a [`PodInfo`] as the `Pod` it
/// came from.
impl Lookup for PodInfo {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(self.name.as_str().into())
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(self.namespace.as_str().into())
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(self.resource_version.as_str().into())
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        Some(self.uid.as_str().into())
    }
}

/// Keeps name, namespace, uid, resourceVersion, labels, deletionTimestamp
/// (and whatever identifies the object to the reflector).
fn meta(m: &mut ObjectMeta, keep_labels: bool) {
    m.annotations = None;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    if !keep_labels {
        m.labels = None;
    }
}

/// A namespace: its labels (enrolment).
pub fn namespace(n: &mut Namespace) {
    meta(&mut n.metadata, true);
    n.spec = None;
    n.status = None;
}

/// A Service: its spec (cluster IPs, ports, type).
pub fn service(s: &mut Service) {
    meta(&mut s.metadata, false);
    s.status = None;
    if let Some(spec) = s.spec.as_mut() {
        spec.selector = None;
    }
}

/// An EndpointSlice: endpoints, ports and the label naming its Service.
pub fn endpoint_slice(s: &mut EndpointSlice) {
    meta(&mut s.metadata, true);
    for e in &mut s.endpoints {
        e.target_ref = None;
        e.hints = None;
        e.deprecated_topology = None;
    }
}

/// A node: its addresses.
pub fn node(n: &mut Node) {
    meta(&mut n.metadata, false);
    n.spec = None;
    if let Some(status) = n.status.take() {
        n.status = Some(NodeStatus {
            addresses: status.addresses,
            ..NodeStatus::default()
        });
    }
}
