//! What the stores keep of each object: only the fields [`crate::convert`]
//! reads. A real pod carries managed fields, annotations, container specs
//! and statuses (tens of kB each); a node lists its container images. Kept
//! whole, 10 000 pods would cost hundreds of MB.

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

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

/// A pod: identity, placement, addresses, phase.
pub fn pod(p: &mut Pod) {
    meta(&mut p.metadata, true);
    if let Some(spec) = p.spec.take() {
        p.spec = Some(PodSpec {
            node_name: spec.node_name,
            service_account_name: spec.service_account_name,
            host_network: spec.host_network,
            ..PodSpec::default()
        });
    }
    if let Some(status) = p.status.take() {
        p.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..PodStatus::default()
        });
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
