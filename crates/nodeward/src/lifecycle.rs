//! Process lifecycle: file-descriptor limits, listeners that a successor can
//! share, and the handover channel between an old and a new nodeward on the
//! same node.
//!
//! Upgrade without refusing a connection: every listener is bound with
//! `SO_REUSEPORT`, so the new process accepts beside the old one (and,
//! steered by a tiny classic BPF program, takes every new connection from
//! the moment it binds); the kernel
//! programs are pinned, so the new process adopts them instead of
//! re-attaching; then it asks the old one, over an abstract Unix socket
//! named after the pin directory, to hand over. The old process stops
//! accepting (with `tcp_migrate_req`, connections still queued on its
//! listeners move to the new ones), answers, leaves the pins in place and
//! drains.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, UnixListener, UnixStream},
    time::timeout,
};

/// Backlog of every listener.
const BACKLOG: u32 = 4096;
/// How long either side of a handover waits for the other.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST: &[u8] = b"HANDOVER\n";
const DONE: &[u8] = b"DONE\n";

/// Open files the proxy asks for: every relayed connection costs two
/// descriptors (same-node: pod side and dialled side; cross-node: pod side
/// and a share of a tunnel), so a node with 100k connections needs about
/// this many.
pub const WANTED_NOFILE: u64 = 1 << 20;

/// Raises `RLIMIT_NOFILE` as far as allowed: the default soft limit (1024)
/// would cap a node at a few hundred connections (ztunnel#1585), and a hard
/// limit inherited from a shell or runtime (often 20k or 64k) at a few
/// thousand. With `CAP_SYS_RESOURCE` (the DaemonSet grants it) both
/// limits go up to [`WANTED_NOFILE`], bounded by `fs.nr_open`; without it
/// the soft limit goes up to the hard one. Returns the limits before and
/// after.
pub fn raise_nofile_limit() -> Option<NofileChange> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let wanted = WANTED_NOFILE.min(nr_open).max(hard);
    // A hard limit above a since-lowered `fs.nr_open` cannot be set as the
    // soft limit.
    let reachable = hard.min(nr_open);
    let after = if wanted > hard && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        wanted
    } else if soft < reachable && setrlimit(Resource::RLIMIT_NOFILE, reachable, hard).is_ok() {
        reachable
    } else {
        soft
    };
    Some(NofileChange {
        before: (soft, hard),
        after,
    })
}

/// What [`raise_nofile_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileChange {
    /// Soft and hard limit found at start.
    pub before: (u64, u64),
    /// The soft limit now in force.
    pub after: u64,
}

/// Asks the kernel to move connections queued on a closing listener to
/// another listener of its `SO_REUSEPORT` group, so a handover loses none
/// (Linux ≥ 5.14, see [`nodeward_bpf::probe::listener_migration`]; per
/// network namespace). Best effort: returns whether it is on.
pub fn enable_listener_migration() -> bool {
    if let Err(why) = nodeward_bpf::probe::listener_migration() {
        tracing::warn!(reason = %why, "tcp_migrate_req not used: a handover may reset queued connections");
        return false;
    }
    match std::fs::write(nodeward_bpf::probe::MIGRATE_REQ_SYSCTL, "1") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot enable tcp_migrate_req (Linux 5.14+): a handover may reset queued connections");
            false
        }
    }
}

/// A listener that a successor can bind too (`SO_REUSEPORT`), and that
/// hands every new connection to that successor as soon as it binds (see
/// [`prefer_successor`]).
pub fn shared_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    prefer_successor(&listener)?;
    Ok(listener)
}

/// Steers the `SO_REUSEPORT` group of `listener` (after `listen`, when it
/// has joined the group: a program set before would be dropped on joining)
/// with the classic BPF program `ret #1`: every new connection goes to the
/// group's second listener, the successor, while there are two. Alone, the
/// index is out of range and the kernel falls back to its hash (the one
/// listener).
///
/// Without it the kernel spreads new connections over both listeners until
/// the old one closes, and a connection whose handshake completes while
/// the old listener is closing is reset: `tcp_migrate_req` moves what is
/// queued and what is still mid-handshake, but a child created just as the
/// listener leaves the LISTEN state is dropped
/// (`inet_csk_reqsk_queue_add`). With every new connection on the
/// successor from the moment it binds, the old listener holds only what it
/// queued before, which `close` migrates.
fn prefer_successor(listener: &TcpListener) -> io::Result<()> {
    use nix::{
        libc::{sock_filter, sock_fprog, BPF_K, BPF_RET},
        sys::socket::{setsockopt, sockopt::AttachReusePortCbpf},
    };
    let mut program = [sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    setsockopt(listener, AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// The running instance's side of the handover channel.
pub struct Handover {
    listener: UnixListener,
    /// A successor connected and is (or was) asking: a stop signal now
    /// must finish the handover instead of detaching the programs it uses.
    pending: Arc<AtomicBool>,
}

/// A successor waiting for this instance to stop accepting.
pub struct Request {
    stream: UnixStream,
}

impl Handover {
    /// Claims the channel for the instance using `pin_dir`. Fails with
    /// `AddrInUse` while another instance still holds it.
    pub fn bind(pin_dir: &Path) -> io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name(pin_dir))?;
        let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std.set_nonblocking(true)?;
        Ok(Self {
            listener: UnixListener::from_std(std)?,
            pending: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Claims the channel, waiting for a predecessor to let go of it.
    pub async fn bind_when_free(pin_dir: &Path) -> io::Result<Self> {
        let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
        loop {
            match Self::bind(pin_dir) {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// The next successor asking to take over. Abstract sockets carry no
    /// file permissions, so only a peer running as our own user (root on a
    /// node) is listened to; every connection is read in its own task with
    /// a capped line, so idle or hostile peers cannot hold the channel.
    pub async fn next_request(&self) -> Request {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if !trusted(&stream) {
                        tracing::warn!("handover request from another user ignored");
                        continue;
                    }
                    let (tx, pending) = (tx.clone(), self.pending.clone());
                    tokio::spawn(async move {
                        if let Some(request) = read_request(stream).await {
                            pending.store(true, Ordering::Release);
                            let _ = tx.send(request).await;
                        }
                    });
                }
                Some(request) = rx.recv() => return request,
            }
        }
    }

    /// Whether a successor has asked to take over.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

/// Reads one request line (at most a few bytes) within the timeout.
async fn read_request(stream: UnixStream) -> Option<Request> {
    let mut reader = BufReader::new(stream).take(REQUEST.len() as u64);
    let mut line = Vec::new();
    let read = timeout(HANDOVER_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    (matches!(read, Ok(Ok(_))) && line == REQUEST).then(|| Request {
        stream: reader.into_inner().into_inner(),
    })
}

/// A peer with our own uid (nodeward runs as root on a node).
fn trusted(stream: &UnixStream) -> bool {
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == nix::unistd::geteuid().as_raw())
}

impl Request {
    /// Tells the successor this instance no longer accepts. An error means
    /// the successor is gone: the caller must not leave the programs to it.
    pub async fn done(mut self) -> io::Result<()> {
        timeout(HANDOVER_TIMEOUT, self.stream.write_all(DONE))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }
}

/// Whether an instance holds the channel for `pin_dir` (it is running).
pub fn is_running(pin_dir: &Path) -> io::Result<bool> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name(pin_dir))?;
    match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        Err(e) => Err(e),
    }
}

/// Asks the instance running with `pin_dir` to stop accepting, and waits
/// until it has. Connects afresh, so a slow start-up cannot time out a
/// connection opened long before.
pub async fn request_handover(pin_dir: &Path) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name(pin_dir))?;
    let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    std.set_nonblocking(true)?;
    let mut stream = UnixStream::from_std(std)?;
    let exchange = async {
        stream.write_all(REQUEST).await?;
        let mut reader = BufReader::new(stream).take(DONE.len() as u64);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await?;
        if line == DONE {
            Ok(())
        } else {
            Err(io::Error::other(
                "the running instance did not confirm the handover",
            ))
        }
    };
    timeout(HANDOVER_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Abstract socket names are per network namespace, like the node proxy.
fn name(pin_dir: &Path) -> Vec<u8> {
    let mut n = b"nodeward-handover:".to_vec();
    n.extend_from_slice(pin_dir.as_os_str().as_encoded_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With CAP_SYS_RESOURCE even the hard limit goes up; without it, at
    /// least the soft limit is raised to the hard one.
    #[test]
    fn open_file_limit_goes_as_high_as_allowed() {
        use nix::sys::resource::{getrlimit, Resource};
        let change = raise_nofile_limit().expect("limits");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("limits");
        assert_eq!(soft, change.after);
        assert!(
            soft >= change.before.1,
            "soft limit below the old hard limit"
        );
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .expect("nr_open")
            .trim()
            .parse()
            .expect("number");
        let wanted = WANTED_NOFILE.min(nr_open).max(change.before.1);
        assert!(
            hard == wanted || hard == change.before.1,
            "hard limit {hard}: neither raised to {wanted} nor left alone"
        );
        assert!(
            soft == hard.min(nr_open),
            "soft limit {soft} left below the reachable hard limit {hard}"
        );
    }

    #[tokio::test]
    async fn a_successor_finds_the_running_instance_and_takes_over() {
        let dir = Path::new("/nodeward-test/handover").join(std::process::id().to_string());
        assert!(!is_running(&dir).expect("probe"));
        let running = Handover::bind(&dir).expect("bind");
        assert_eq!(
            Handover::bind(&dir).err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse),
            "only one instance holds the channel"
        );
        assert!(is_running(&dir).expect("probe"), "a probe finds it");
        // Junk and idle peers do not hold the channel up.
        let junk = dir.clone();
        let _idle = tokio::task::spawn_blocking(move || {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name(&junk)).expect("name");
            let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
            std::io::Write::write_all(&mut s, b"HANDOVER-PLEASE-AND-MORE\n").expect("write");
            let idle = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
            (s, idle)
        })
        .await
        .expect("junk peers");
        assert!(!running.pending());
        let old = tokio::spawn(async move {
            let request = running.next_request().await;
            assert!(running.pending());
            request.done().await.expect("successor still there");
            drop(running);
        });
        request_handover(&dir).await.expect("handover");
        old.await.expect("old side");
        let _new = Handover::bind_when_free(&dir)
            .await
            .expect("free after handover");
    }

    #[tokio::test]
    async fn shared_listeners_bind_the_same_port_twice() {
        let first = shared_listener("127.0.0.1:0".parse().expect("addr")).expect("first");
        let addr = first.local_addr().expect("addr");
        let second = shared_listener(addr).expect("second on the same port");
        assert_eq!(second.local_addr().expect("addr"), addr);
    }
}
