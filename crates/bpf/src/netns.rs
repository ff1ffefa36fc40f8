//! The proxy's network namespace cookie. The programs compare it with each
//! socket's, so they never redirect the proxy's own connections.
//!
//! Linux 5.14 and later report it with `SO_NETNS_COOKIE`. Older kernels
//! (from 5.7, where BPF programs can read it) learn it with
//! `nw_netns_learn`: a connect4 program, attached for a moment to this
//! process's own cgroup, records the cookie of a UDP `connect()` this
//! process makes to a port only it holds.

use std::{
    fs::File,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
};

use aya::{
    maps::{Array, MapData},
    programs::CgroupSockAddr,
    Ebpf,
};
use nodeward_common::{maps, programs};

use crate::{own_cgroup, program, RedirectError, ATTACH_MODE};

/// How the cookie was found, for the start-up log and the kernel probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSource {
    /// `getsockopt(SO_NETNS_COOKIE)`, Linux 5.14+.
    Sockopt,
    /// The `nw_netns_learn` program (older kernels).
    Learned,
}

/// The cookie of this process's network namespace: with `SO_NETNS_COOKIE`
/// where the kernel has it, learned by a BPF program where it does not.
/// `ebpf` is a loaded object to learn with; without one a fresh object is
/// loaded (only on kernels older than 5.14).
pub(crate) fn proxy_cookie(
    ebpf: Option<&mut Ebpf>,
    cgroup_mount: &Path,
) -> Result<(u64, CookieSource), RedirectError> {
    match from_sockopt() {
        Ok(cookie) => Ok((cookie, CookieSource::Sockopt)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            tracing::info!(
                "this kernel has no SO_NETNS_COOKIE (Linux 5.14+): learning the proxy's network namespace cookie with a BPF program"
            );
            Ok((learn(ebpf, cgroup_mount)?, CookieSource::Learned))
        }
        Err(e) => Err(RedirectError::NetnsCookie(e)),
    }
}

/// `getsockopt(SOL_SOCKET, SO_NETNS_COOKIE)` on a throwaway socket.
pub fn from_sockopt() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is an open socket for the whole call; `cookie` and `len`
    // are valid, writable and sized as SO_NETNS_COOKIE requires (a u64).
    #[expect(unsafe_code, reason = "no safe wrapper exposes SO_NETNS_COOKIE")]
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Learns the cookie with `nw_netns_learn` (the fallback for kernels
/// without `SO_NETNS_COOKIE`; public so the kernel probe and tests can run
/// it on any kernel).
pub fn learn(ebpf: Option<&mut Ebpf>, cgroup_mount: &Path) -> Result<u64, RedirectError> {
    let mut loaded;
    let ebpf = match ebpf {
        Some(ebpf) => ebpf,
        None => {
            loaded = crate::load_object()?;
            &mut loaded
        }
    };
    let io = RedirectError::NetnsCookie;
    // The port only this process holds while it learns: nothing else
    // connects to it by chance, so the program records our socket.
    let target = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    let port = target.local_addr().map_err(io)?.port();
    learn_map(ebpf)?
        .set(0, u64::from(port), 0)
        .map_err(map_error)?;
    let own = own_cgroup(cgroup_mount)?;
    let cgroup = File::open(&own).map_err(|source| RedirectError::Cgroup { path: own, source })?;
    let name = programs::NETNS_LEARN;
    let err = |source| RedirectError::Program { name, source };
    let prog: &mut CgroupSockAddr = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(err)?;
    }
    let id = prog.attach(&cgroup, ATTACH_MODE).map_err(err)?;
    let connected = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|sock| sock.connect(target.local_addr()?));
    prog.detach(id).map_err(err)?;
    // The program runs before the route lookup, so a connect() that then
    // fails (loopback down in a fresh namespace) still taught it the cookie.
    let cookie = learn_map(ebpf)?.get(&1, 0).map_err(map_error)?;
    if cookie == 0 {
        let why = match connected {
            Ok(()) => "nw_netns_learn saw no connect() from this process".to_owned(),
            Err(e) => format!("nw_netns_learn saw no connect() from this process (connect: {e})"),
        };
        return Err(io(std::io::Error::other(why)));
    }
    Ok(cookie)
}

fn learn_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, u64>, RedirectError> {
    let name = maps::NETNS_LEARN;
    let map = ebpf.map_mut(name).ok_or(RedirectError::Missing(name))?;
    Array::try_from(map).map_err(map_error)
}

fn map_error(source: aya::maps::MapError) -> RedirectError {
    RedirectError::Map {
        name: maps::NETNS_LEARN,
        source,
    }
}
