//! What this kernel supports of what nodeward uses. Every program is loaded
//! and attached for real, to a throwaway cgroup no process is in, and every
//! optional mechanism is tried the way the proxy uses it. `nodeward probe`
//! prints the result; `cargo xtask vm-test` records it for each kernel.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
    },
    Ebpf,
};
use nodeward_common::programs;

use crate::{attach_splice_msg, fd_link, netns, program, RedirectError, ATTACH_MODE};

/// Whether the proxy can run without a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The proxy refuses to start without it.
    Required,
    /// The proxy runs without it and loses what is said here.
    Optional(&'static str),
}

/// One feature and whether this kernel has it.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Short stable name (`connect4`, `sockmap`, …).
    pub name: &'static str,
    /// What it is, in a few words.
    pub what: &'static str,
    /// The upstream Linux release that brought it (distribution kernels
    /// may have it earlier, through backports).
    pub since: &'static str,
    pub need: Need,
    /// `Err` says what the kernel answered.
    pub result: Result<(), String>,
}

impl Feature {
    /// Whether a required feature is missing.
    pub fn blocks_start(&self) -> bool {
        self.need == Need::Required && self.result.is_err()
    }
}

/// The feature a program of the object needs, for error messages at start.
pub fn requirement(program: &str) -> &'static str {
    FEATURES
        .iter()
        .find(|f| f.program == Some(program))
        .map_or("", |f| f.sentence)
}

/// Static facts about each feature; the result is what [`probe`] adds.
struct Spec {
    name: &'static str,
    what: &'static str,
    since: &'static str,
    need: Need,
    program: Option<&'static str>,
    /// Said at start when the program will not load or attach.
    sentence: &'static str,
}

const FEATURES: &[Spec] = &[
    Spec {
        name: "connect4",
        what: "cgroup connect4 program through a bpf_link (redirects IPv4 connects)",
        since: "5.7",
        need: Need::Required,
        program: Some(programs::CONNECT4),
        sentence: "a cgroup connect4 program through a bpf_link, with bpf_get_netns_cookie and bpf_get_current_ancestor_cgroup_id: Linux 5.7 or newer",
    },
    Spec {
        name: "connect6",
        what: "cgroup connect6 program through a bpf_link (redirects IPv6 connects)",
        since: "5.7",
        need: Need::Required,
        program: Some(programs::CONNECT6),
        sentence: "a cgroup connect6 program through a bpf_link, with bpf_get_netns_cookie and bpf_get_current_ancestor_cgroup_id: Linux 5.7 or newer",
    },
    Spec {
        name: "sock_ops",
        what: "cgroup sock_ops program (keys the original destination by 4-tuple)",
        since: "5.7",
        need: Need::Required,
        program: Some(programs::SOCK_OPS),
        sentence: "a cgroup sock_ops program through a bpf_link: Linux 5.7 or newer",
    },
    Spec {
        name: "cgroup_skb",
        what: "cgroup_skb ingress program (strict mTLS: nothing reaches a pod around the proxy)",
        since: "5.7",
        need: Need::Required,
        program: Some(programs::INBOUND),
        sentence: "a cgroup_skb ingress program through a bpf_link: Linux 5.7 or newer",
    },
    Spec {
        name: "netns_cookie",
        what: "the proxy's network namespace cookie, by SO_NETNS_COOKIE or learned by nw_netns_learn",
        since: "5.7",
        need: Need::Required,
        program: Some(programs::NETNS_LEARN),
        sentence: "a cgroup connect4 program with bpf_get_netns_cookie, to learn the proxy's network namespace cookie where SO_NETNS_COOKIE is missing: Linux 5.7 or newer",
    },
    Spec {
        name: "so_netns_cookie",
        what: "getsockopt(SO_NETNS_COOKIE)",
        since: "5.14",
        need: Need::Optional("nothing: the cookie is learned with a BPF program instead"),
        program: None,
        sentence: "",
    },
    Spec {
        name: "link_pinning",
        what: "pinning bpf_links under bpffs and opening them again",
        since: "5.7",
        need: Need::Optional("takeover on upgrade (bpf.pinDir): redirection stops between the old and the new proxy"),
        program: None,
        sentence: "",
    },
    Spec {
        name: "sockmap",
        what: "sk_msg on a sockhash, sock_ops with bpf_get_netns_cookie (the same-node fast path)",
        since: "5.15",
        need: Need::Optional("the sockmap fast path (sockmap.enabled, off by default): same-node hops take the normal path"),
        program: Some(programs::SPLICE_OPS),
        sentence: "sk_msg on a sockhash and a sock_ops program with bpf_get_netns_cookie: Linux 5.15 or newer",
    },
    Spec {
        name: "tcp_migrate_req",
        what: "net.ipv4.tcp_migrate_req (queued connections move to the successor's listener)",
        since: "5.14",
        need: Need::Optional("on a takeover, connections still queued on the old listener are reset"),
        program: None,
        sentence: "",
    },
];

/// Tries every feature. `cgroup_mount` is the cgroup v2 mount; `bpffs` a
/// BPF filesystem to try pinning under (`None`: reported as not tried).
pub fn probe(cgroup_mount: &Path, bpffs: Option<&Path>) -> Vec<Feature> {
    let mut results = Results::default();
    match Scratch::create(cgroup_mount) {
        Ok(scratch) => {
            try_programs(&scratch, cgroup_mount, bpffs, &mut results);
            drop(scratch);
        }
        Err(e) => results.fail_all_programs(&e.to_string()),
    }
    results.set(
        "so_netns_cookie",
        netns::from_sockopt().map(drop).map_err(|e| e.to_string()),
    );
    results.set("tcp_migrate_req", listener_migration());
    FEATURES
        .iter()
        .map(|spec| Feature {
            name: spec.name,
            what: spec.what,
            since: spec.since,
            need: spec.need,
            result: results.take(spec.name),
        })
        .collect()
}

/// Results by feature name, filled as the probe goes.
#[derive(Default)]
struct Results(Vec<(&'static str, Result<(), String>)>);

impl Results {
    fn set(&mut self, name: &'static str, result: Result<(), String>) {
        self.0.push((name, result));
    }

    fn fail_all_programs(&mut self, why: &str) {
        for spec in FEATURES
            .iter()
            .filter(|s| s.program.is_some() || s.name == "link_pinning")
        {
            self.set(spec.name, Err(why.to_owned()));
        }
    }

    fn take(&mut self, name: &str) -> Result<(), String> {
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(i) => self.0.swap_remove(i).1,
            None => Err("not tried".into()),
        }
    }
}

fn try_programs(scratch: &Scratch, mount: &Path, bpffs: Option<&Path>, results: &mut Results) {
    let mut ebpf = match crate::load_object() {
        Ok(ebpf) => ebpf,
        Err(e) => return results.fail_all_programs(&format!("loading the BPF object: {e}")),
    };
    let cgroup = &scratch.file;
    let mut links = Vec::new();
    for (feature, name) in [
        ("connect4", programs::CONNECT4),
        ("connect6", programs::CONNECT6),
    ] {
        let link = attach_sock_addr(&mut ebpf, name, cgroup);
        results.set(feature, kept(link, &mut links));
    }
    let link = attach_sock_ops(&mut ebpf, programs::SOCK_OPS, cgroup);
    results.set("sock_ops", kept(link, &mut links));
    let link = attach_inbound(&mut ebpf, cgroup);
    results.set("cgroup_skb", kept(link, &mut links));
    results.set("netns_cookie", check_learned_cookie(&mut ebpf, mount));
    results.set("link_pinning", try_pinning(links.pop(), bpffs));
    results.set(
        "sockmap",
        try_sockmap(&mut ebpf, cgroup).map_err(|e| e.to_string()),
    );
}

/// Learns the cookie with the BPF program, and where the kernel also has
/// `SO_NETNS_COOKIE`, checks both agree (so the fallback is tested on every
/// kernel new enough to tell).
fn check_learned_cookie(ebpf: &mut Ebpf, mount: &Path) -> Result<(), String> {
    let learned = netns::learn(Some(ebpf), mount).map_err(|e| e.to_string())?;
    match netns::from_sockopt() {
        Ok(told) if told != learned => Err(format!(
            "nw_netns_learn saw cookie {learned}, SO_NETNS_COOKIE says {told}"
        )),
        _ => Ok(()),
    }
}

/// Keeps a link until the probe ends (so later attachments meet a cgroup
/// that already has programs, as in the proxy).
fn kept(link: Result<FdLink, RedirectError>, links: &mut Vec<FdLink>) -> Result<(), String> {
    link.map(|l| links.push(l)).map_err(|e| e.to_string())
}

fn attach_sock_addr(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, RedirectError> {
    let prog: &mut CgroupSockAddr = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog.attach(cgroup, ATTACH_MODE).map_err(err)?;
    fd_link(name, prog.take_link(id).map_err(err)?)
}

fn attach_sock_ops(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, RedirectError> {
    let prog: &mut SockOps = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog.attach(cgroup, ATTACH_MODE).map_err(err)?;
    fd_link(name, prog.take_link(id).map_err(err)?)
}

fn attach_inbound(ebpf: &mut Ebpf, cgroup: &File) -> Result<FdLink, RedirectError> {
    let name = programs::INBOUND;
    let prog: &mut CgroupSkb = program(ebpf, name)?;
    let err = |source| RedirectError::Program { name, source };
    prog.load().map_err(err)?;
    let id = prog
        .attach(cgroup, CgroupSkbAttachType::Ingress, ATTACH_MODE)
        .map_err(err)?;
    fd_link(name, prog.take_link(id).map_err(err)?)
}

/// Pins a link, opens the pin as a successor would, and removes it. When
/// `bpffs` is no BPF filesystem (none is mounted there), the probe mounts a
/// private one for the moment: it tests the kernel, not the host's mounts.
fn try_pinning(link: Option<FdLink>, bpffs: Option<&Path>) -> Result<(), String> {
    let link = link.ok_or("no program attached, nothing to pin")?;
    let dir = bpffs.ok_or("not tried: no BPF filesystem given")?;
    if crate::check_bpffs(dir).is_ok() {
        return pin_and_reopen(link, dir);
    }
    let private = PrivateBpffs::mount().map_err(|e| format!("mounting a BPF filesystem: {e}"))?;
    pin_and_reopen(link, &private.0)
}

fn pin_and_reopen(link: FdLink, dir: &Path) -> Result<(), String> {
    let path = dir.join(format!("nodeward-probe-{}", std::process::id()));
    let pinned = link
        .pin(&path)
        .map_err(|e| format!("pinning at {}: {e}", path.display()));
    let reopened = pinned
        .and_then(|p| {
            let again =
                PinnedLink::from_pin(&path).map_err(|e| format!("opening the pin again: {e}"));
            let _ = p.unpin();
            again
        })
        .map(drop);
    let _ = fs::remove_file(&path);
    reopened
}

/// A BPF filesystem mounted for the probe under the temp dir; unmounted and
/// removed on drop.
struct PrivateBpffs(PathBuf);

impl PrivateBpffs {
    fn mount() -> Result<Self, nix::Error> {
        let dir = std::env::temp_dir().join(format!("nodeward-probe-{}-bpffs", std::process::id()));
        fs::create_dir_all(&dir)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let mounted = nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        match mounted {
            Ok(()) => Ok(Self(dir)),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

/// Attaches the fast path's two programs: sk_msg on the sockhash and
/// sock_ops on the scratch cgroup.
fn try_sockmap(ebpf: &mut Ebpf, cgroup: &File) -> Result<(), RedirectError> {
    let _msg = attach_splice_msg(ebpf)?;
    attach_sock_ops(ebpf, programs::SPLICE_OPS, cgroup).map(drop)
}

/// A cgroup made for the probe, empty, removed on drop.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(mount: &Path) -> Result<Self, RedirectError> {
        let path = mount.join(format!("nodeward-probe-{}", std::process::id()));
        let cgroup_error = |source| RedirectError::Cgroup {
            path: path.clone(),
            source,
        };
        fs::create_dir(&path).map_err(cgroup_error)?;
        match File::open(&path) {
            Ok(file) => Ok(Self { path, file }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(cgroup_error(e))
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Links are gone by now (they were dropped first); an empty cgroup
        // without programs can be removed.
        let _ = fs::remove_dir(&self.path);
    }
}

/// The sysctl that moves connections queued on a closing listener to
/// another listener of its `SO_REUSEPORT` group.
pub const MIGRATE_REQ_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Whether this kernel moves queued connections to a successor's listener
/// (`net.ipv4.tcp_migrate_req`, upstream Linux 5.14). The sysctl alone does
/// not tell: Debian's 5.10 has it, yet in the VM tests it moved no queued
/// connection, and with it on a draining proxy's late connects timed out
/// instead of being refused (docs/kernel-matrix.md). So the release must
/// say 5.14 or later too.
pub fn listener_migration() -> Result<(), String> {
    let uname = nix::sys::utsname::uname().map_err(|e| e.to_string())?;
    let release = uname.release().to_string_lossy();
    if !release_at_least(&release, (5, 14)) {
        return Err(format!(
            "kernel {release} is older than 5.14 (Debian's 5.10 has the sysctl but moved no queued connection in tests)"
        ));
    }
    if !Path::new(MIGRATE_REQ_SYSCTL).exists() {
        return Err(format!("no {MIGRATE_REQ_SYSCTL}"));
    }
    Ok(())
}

/// Whether a `uname -r` release (`6.1.0-50-amd64`, `5.14.0-427.el9.x86_64`)
/// is at least `major.minor`; an unreadable one is not.
fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let number = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok());
    match (number(parts.next()), number(parts.next())) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn releases_are_compared_by_major_and_minor() {
        assert!(!release_at_least("5.10.0-32-amd64", (5, 14)));
        assert!(!release_at_least("4.19.0-27-amd64", (5, 14)));
        assert!(release_at_least("5.14.0-427.el9.x86_64", (5, 14)));
        assert!(release_at_least("5.15.0-91-generic", (5, 14)));
        assert!(release_at_least("6.1.0-50-amd64", (5, 14)));
        assert!(release_at_least("6.12.117+deb13-amd64", (5, 14)));
        assert!(!release_at_least("", (5, 14)));
        assert!(!release_at_least("linux", (5, 14)));
    }
}
