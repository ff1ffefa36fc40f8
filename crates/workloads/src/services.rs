//! Services: virtual IPs that stand for a set of workloads, as Kubernetes'
//! Service and EndpointSlice describe them. The workloads file's
//! `services:` section mirrors them; the proxy resolves a connection to a
//! VIP and port to one ready endpoint and from then on treats it exactly
//! like a call to that pod.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use serde::Deserialize;

use crate::Workload;

/// One entry of `services` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceFile {
    pub name: String,
    pub namespace: String,
    /// ClusterIPs, IPv4 and IPv6.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortFile>,
    /// Endpoints are the workloads of the namespace with these labels...
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// ...or these IPs (a Service without a selector, with its own
    /// EndpointSlices).
    #[serde(default)]
    pub endpoints: Option<Vec<IpAddr>>,
}

/// One entry of a service's `ports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortFile {
    pub port: u16,
    pub target_port: u32,
}

/// A Service: its VIPs and ports, and the endpoints behind them.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>`, as metrics and access records name it.
    pub id: String,
    pub vips: Vec<IpAddr>,
    /// Service port → target port.
    pub ports: BTreeMap<u16, u16>,
    /// What the endpoints were chosen by, for `/config_dump`.
    pub selector: Option<BTreeMap<String, String>>,
    /// Ready endpoints, in file order (workload order for a selector).
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a Service: a workload (all its IPs) or one listed IP.
#[derive(Debug)]
pub struct Endpoint {
    /// Its addresses; a dual-stack pod has one of each family.
    pub ips: Vec<IpAddr>,
    /// The workload behind the IP, when the registry knows it.
    pub workload: Option<Arc<Workload>>,
    /// Connections open to this endpoint through this Service, for load
    /// balancing; carried over reloads for endpoints that stay.
    pub load: Arc<AtomicUsize>,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl Endpoint {
    /// The address to dial for a call to `vip`: one of the VIP's family
    /// when the endpoint has one.
    pub fn ip_for(&self, vip: IpAddr) -> IpAddr {
        self.ips
            .iter()
            .find(|ip| ip.is_ipv4() == vip.is_ipv4())
            .or(self.ips.first())
            .copied()
            .unwrap_or(vip)
    }

    /// Connections open to this endpoint now.
    pub fn open(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
}

/// A connection counted against an endpoint's load until dropped.
pub struct EndpointGuard(Arc<AtomicUsize>);

impl EndpointGuard {
    /// Counts one more open connection on `endpoint`.
    pub fn open(endpoint: &Endpoint) -> Self {
        endpoint.load.fetch_add(1, Ordering::Relaxed);
        Self(endpoint.load.clone())
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The services of a workloads file, indexed by (VIP, port).
#[derive(Debug, Default)]
pub struct Services {
    all: Vec<Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
}

/// A problem with one `services` entry: the field (relative to the entry)
/// and the message.
pub type EntryError = (String, String);

impl Services {
    /// Validates `files` against the workloads (`by_ip`, `workloads`) and
    /// builds the index. Warnings (a selector that matches nothing) are
    /// pushed to `warnings`.
    pub fn build(
        files: Vec<ServiceFile>,
        workloads: &[Arc<Workload>],
        by_ip: &HashMap<IpAddr, Arc<Workload>>,
        warnings: &mut Vec<String>,
    ) -> Result<Self, (usize, EntryError)> {
        let mut out = Self::default();
        let mut names = HashSet::new();
        for (i, file) in files.into_iter().enumerate() {
            let service = Service::build(file, workloads, by_ip).map_err(|e| (i, e))?;
            if !names.insert((service.namespace.clone(), service.name.clone())) {
                return Err((i, ("name".into(), format!("{service} is listed twice"))));
            }
            if service.endpoints.is_empty() && service.selector.is_some() {
                warnings.push(format!(
                    "service {service}: its selector matches no workload"
                ));
            }
            let service = Arc::new(service);
            for vip in &service.vips {
                if let Some(other) = out.by_vip.insert(*vip, service.clone()) {
                    let msg = format!("VIP {vip} is also claimed by service {other}");
                    return Err((i, ("vips".into(), msg)));
                }
            }
            out.all.push(service);
        }
        Ok(out)
    }

    /// The service at `vip` and the target port of its `port`.
    pub fn resolve(&self, vip: IpAddr, port: u16) -> Option<(&Arc<Service>, u16)> {
        let service = self.by_vip.get(&vip.to_canonical())?;
        let target = *service.ports.get(&port)?;
        Some((service, target))
    }

    /// Whether `ip` is a service VIP (on any port).
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.by_vip.contains_key(&ip.to_canonical())
    }

    /// Every service, in file order.
    pub fn all(&self) -> &[Arc<Service>] {
        &self.all
    }

    /// Keeps the open-connection counts of endpoints that are still there
    /// (same service, same IP), so a reload does not reset the balance.
    pub fn inherit_loads(&mut self, old: &Services) {
        let previous: HashMap<(&str, &str, IpAddr), &Arc<AtomicUsize>> = old
            .all
            .iter()
            .flat_map(|s| {
                s.endpoints.iter().filter_map(move |e| {
                    let ip = *e.ips.first()?;
                    Some(((s.namespace.as_str(), s.name.as_str(), ip), &e.load))
                })
            })
            .collect();
        // The index holds the only other references to a fresh build's
        // services: drop it, update in place, rebuild it.
        self.by_vip.clear();
        for service in &mut self.all {
            let Some(service) = Arc::get_mut(service) else {
                continue;
            };
            for e in &mut service.endpoints {
                let Some(ip) = e.ips.first() else { continue };
                let key = (service.namespace.as_str(), service.name.as_str(), *ip);
                if let Some(load) = previous.get(&key) {
                    e.load = Arc::clone(load);
                }
            }
        }
        self.reindex();
    }

    fn reindex(&mut self) {
        self.by_vip = self
            .all
            .iter()
            .flat_map(|s| s.vips.iter().map(move |v| (*v, s.clone())))
            .collect();
    }
}

impl Service {
    fn build(
        file: ServiceFile,
        workloads: &[Arc<Workload>],
        by_ip: &HashMap<IpAddr, Arc<Workload>>,
    ) -> Result<Self, EntryError> {
        let err = |f: &str, m: String| (f.to_owned(), m);
        crate::check_dns_label("name", &file.name).map_err(|(f, m)| err(f, m))?;
        crate::check_dns_label("namespace", &file.namespace).map_err(|(f, m)| err(f, m))?;
        let vips = vips(&file.vips, by_ip)?;
        let ports = ports(&file.ports)?;
        let endpoints = match (&file.selector, file.endpoints) {
            (Some(sel), None) => selected(workloads, &file.namespace, sel),
            (None, Some(ips)) => listed(ips, by_ip),
            _ => {
                let msg = "give exactly one of `selector` and `endpoints`".to_owned();
                return Err(err("selector", msg));
            }
        };
        Ok(Self {
            id: format!("{}.{}", file.name, file.namespace),
            name: file.name,
            namespace: file.namespace,
            vips,
            ports,
            selector: file.selector,
            endpoints,
        })
    }
}

fn vips(
    vips: &[IpAddr],
    by_ip: &HashMap<IpAddr, Arc<Workload>>,
) -> Result<Vec<IpAddr>, EntryError> {
    if vips.is_empty() {
        return Err(("vips".into(), "must list at least one VIP".into()));
    }
    let vips: Vec<IpAddr> = vips.iter().map(|v| v.to_canonical()).collect();
    for (i, vip) in vips.iter().enumerate() {
        if let Some(w) = by_ip.get(vip) {
            return Err((
                format!("vips[{i}]"),
                format!("{vip} is also the IP of workload {w}"),
            ));
        }
    }
    Ok(vips)
}

fn ports(ports: &[ServicePortFile]) -> Result<BTreeMap<u16, u16>, EntryError> {
    if ports.is_empty() {
        return Err(("ports".into(), "must list at least one port".into()));
    }
    let mut out = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let target = u16::try_from(p.target_port)
            .ok()
            .filter(|t| *t != 0)
            .ok_or_else(|| {
                let msg = format!("{} is out of range (1-65535)", p.target_port);
                (format!("ports[{i}].targetPort"), msg)
            })?;
        if p.port == 0 {
            return Err((format!("ports[{i}].port"), "0 is not a port".into()));
        }
        if out.insert(p.port, target).is_some() {
            let msg = format!("port {} is listed twice", p.port);
            return Err((format!("ports[{i}].port"), msg));
        }
    }
    Ok(out)
}

/// The workloads of `namespace` whose labels include `selector`, one
/// endpoint per IP.
fn selected(
    workloads: &[Arc<Workload>],
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    workloads
        .iter()
        .filter(|w| w.namespace == namespace)
        .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        .map(|w| endpoint(w.ips.clone(), Some(w.clone())))
        .collect()
}

fn listed(ips: Vec<IpAddr>, by_ip: &HashMap<IpAddr, Arc<Workload>>) -> Vec<Endpoint> {
    ips.into_iter()
        .map(|ip| {
            let ip = ip.to_canonical();
            endpoint(vec![ip], by_ip.get(&ip).cloned())
        })
        .collect()
}

fn endpoint(ips: Vec<IpAddr>, workload: Option<Arc<Workload>>) -> Endpoint {
    Endpoint {
        ips,
        workload,
        load: Arc::default(),
    }
}
