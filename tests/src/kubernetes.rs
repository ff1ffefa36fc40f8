//! The API server of a `discovery: kubernetes` cluster: started in
//! node-a's netns on its link address (node-b reaches it over the link;
//! nothing listens in the root netns), fed with the cluster's namespaces,
//! nodes and pods as Kubernetes objects, and a kubeconfig for the proxies.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    apiserver::{ApiState, BlockingApiServer},
    cluster::{pod_uid, Cluster, PodSpec, NODES},
    netns,
};

/// The API server's port on node-a's link address.
const API_PORT: u16 = 6443;

impl Cluster {
    /// Starts the API server with the cluster's objects and writes the
    /// kubeconfig the proxies get in `KUBECONFIG`.
    pub(crate) fn start_api_server(&mut self) -> Result<()> {
        let state = ApiState::default();
        for ns in ["shop", "data"] {
            state.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns,
                    "nodeward.io/mesh": "enabled"}}}));
        }
        for node in NODES {
            state.apply(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node.name},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": self.node_ip(node.name).to_string()},
                    {"type": "Hostname", "address": node.name}]}}));
        }
        for pod in &self.pods {
            state.apply(self.pod_object(pod));
        }
        let ns = self.ns("node-a");
        let addr = SocketAddr::new(self.node_ip("node-a"), API_PORT);
        let server = BlockingApiServer::start_in(move || netns::enter_netns(&ns), addr, state)?;
        std::fs::write(self.kubeconfig_path(), server.kubeconfig())?;
        self.api = Some(server);
        Ok(())
    }

    /// Kills the API server (the proxies' watches fail); the objects stay.
    pub fn stop_api_server(&mut self) {
        if let Some(api) = self.api.as_mut() {
            api.stop();
        }
    }

    /// Starts the killed API server again, same address, same objects.
    pub fn restart_api_server(&mut self) {
        if let Some(api) = self.api.as_mut() {
            api.restart().expect("restarting the API server");
        }
    }

    /// Where the proxies' kubeconfig is.
    pub(crate) fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The objects the API server serves (apply, delete, compact).
    pub fn kube(&self) -> ApiState {
        self.api
            .as_ref()
            .expect("a cluster started with Options::kubernetes")
            .state()
    }

    /// Pod `name` as a running Pod object, labelled `app: <name>`.
    pub fn pod_object(&self, pod: &PodSpec) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod_uid(pod),
                "labels": {"app": pod.name}},
            "spec": {"nodeName": pod.node, "serviceAccountName": pod.service_account,
                "containers": [{"name": pod.name, "image": "nw-pod"}]},
            "status": {"phase": "Running", "podIP": self.ip4(pod.name).to_string(),
                "podIPs": [{"ip": self.ip4(pod.name).to_string()},
                    {"ip": self.ip6(pod.name).to_string()}]}})
    }
}
