//! Packet capture on one interface of a network namespace (AF_PACKET): what
//! crossed the wire, to check what is (and is not) visible on it.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{bail, Context, Result};

use crate::netns::enter_netns;

/// A packet capture on one interface of a network namespace (AF_PACKET,
/// both directions), collecting raw frames until [`Capture::finish`].
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<Captured>>,
}

/// What a capture saw.
#[derive(Debug, Default)]
pub struct Captured {
    pub frames: usize,
    /// Every captured frame, concatenated.
    pub bytes: Vec<u8>,
}

impl Captured {
    /// Whether `needle` occurs anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

/// Upper bound on captured bytes, so a runaway test cannot eat memory.
const CAPTURE_LIMIT: usize = 512 << 20;

impl Capture {
    /// Starts capturing on `iface` inside `ns`; returns once the socket is open.
    pub fn start(ns: &str, iface: &str) -> Result<Self> {
        use std::sync::{atomic::AtomicBool, mpsc, Arc};
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, name, flag) = (ns.to_owned(), iface.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let opened = open_capture(&ns, &name);
            let (fd, ifindex) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            capture_loop(&fd, ifindex, &flag)
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self { stop, thread }),
            Ok(Err(e)) => bail!("capture on {iface}: {e}"),
            Err(_) => bail!("capture on {iface} did not start"),
        }
    }

    /// Stops and returns what was captured.
    pub fn finish(self) -> Result<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
    }
}

fn open_capture(ns: &str, iface: &str) -> Result<(std::os::fd::OwnedFd, u32)> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
    enter_netns(ns)?;
    let ifindex = nix::net::if_::if_nametoindex(iface).with_context(|| format!("no {iface}"))?;
    let fd = socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )
    .context("AF_PACKET socket")?;
    let tick = nix::sys::time::TimeVal::new(0, 100_000);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tick).context("SO_RCVTIMEO")?;
    Ok((fd, ifindex))
}

fn capture_loop(
    fd: &std::os::fd::OwnedFd,
    ifindex: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Captured> {
    use std::os::fd::AsRawFd;
    let mut out = Captured::default();
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) && out.bytes.len() < CAPTURE_LIMIT {
        match nix::sys::socket::recvfrom::<nix::sys::socket::LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((n, Some(addr))) if addr.ifindex() == ifindex as usize => {
                out.frames += 1;
                out.bytes.extend_from_slice(&buf[..n]);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("capture: {e}"),
        }
    }
    Ok(out)
}
