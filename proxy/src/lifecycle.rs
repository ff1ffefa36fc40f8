//! Process lifecycle: file-descriptor limits, listeners that a successor can
//! share, and the handover channel between an old and a new nodeward on the
//! same node.
//!
//! Upgrade without refusing a connection: every listener is bound with
//! `SO_REUSEPORT`, so the new process accepts beside the old one; the kernel
//! programs are pinned, so the new process adopts them instead of
//! re-attaching; then it asks the old one, over an abstract Unix socket
//! named after the pin directory, to hand over. The old process stops
//! accepting (with `tcp_migrate_req`, connections still queued on its
//! listeners move to the new ones), answers, leaves the pins in place and
//! drains.

use std::{io, net::SocketAddr, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, UnixListener, UnixStream},
    time::timeout,
};

/// Backlog of every listener.
const BACKLOG: u32 = 4096;
/// How long either side of a handover waits for the other.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST: &[u8] = b"HANDOVER\n";
const DONE: &[u8] = b"DONE\n";

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every relayed
/// connection costs two descriptors, and the default soft limit (1024) would
/// cap a node at a few hundred connections (ztunnel#1585).
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some((soft, hard))
}

/// Asks the kernel to move connections queued on a closing listener to
/// another listener of its `SO_REUSEPORT` group, so a handover loses none
/// (Linux ≥ 5.14; per network namespace). Best effort.
pub fn enable_listener_migration() {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::write(path, "1") {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot enable tcp_migrate_req: a handover may reset queued connections")
        }
    }
}

/// A listener that a successor can bind too (`SO_REUSEPORT`).
pub fn shared_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The running instance's side of the handover channel.
pub struct Handover {
    listener: UnixListener,
}

/// A successor's connection to the running instance.
pub struct Predecessor {
    stream: UnixStream,
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

    /// The next successor asking to take over; junk on the socket is ignored.
    pub async fn next_request(&self) -> Request {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            let read = timeout(HANDOVER_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
            if matches!(read, Ok(Ok(_))) && line == REQUEST {
                return Request {
                    stream: reader.into_inner(),
                };
            }
        }
    }
}

impl Request {
    /// Tells the successor this instance no longer accepts.
    pub async fn done(mut self) {
        let _ = timeout(HANDOVER_TIMEOUT, self.stream.write_all(DONE)).await;
    }
}

impl Predecessor {
    /// Connects to the instance running with `pin_dir`; `None` when none is.
    pub async fn find(pin_dir: &Path) -> io::Result<Option<Self>> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name(pin_dir))?;
        match std::os::unix::net::UnixStream::connect_addr(&addr) {
            Ok(std) => {
                std.set_nonblocking(true)?;
                Ok(Some(Self {
                    stream: UnixStream::from_std(std)?,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks it to stop accepting and waits until it has.
    pub async fn hand_over(mut self) -> io::Result<()> {
        let exchange = async {
            self.stream.write_all(REQUEST).await?;
            let mut reader = BufReader::new(self.stream);
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

    #[tokio::test]
    async fn a_successor_finds_the_running_instance_and_takes_over() {
        let dir = Path::new("/nodeward-test/handover").join(std::process::id().to_string());
        assert!(Predecessor::find(&dir).await.expect("probe").is_none());
        let running = Handover::bind(&dir).expect("bind");
        assert_eq!(
            Handover::bind(&dir).err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse),
            "only one instance holds the channel"
        );
        let old = tokio::spawn(async move {
            let request = running.next_request().await;
            request.done().await;
            drop(running);
        });
        let pred = Predecessor::find(&dir)
            .await
            .expect("probe")
            .expect("running");
        pred.hand_over().await.expect("handover");
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
