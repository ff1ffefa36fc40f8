//! `nw-bench hold`: the soak's client. Holds many echo connections open
//! through the mesh, each doing a small round trip now and then, closes and
//! reopens a share of them every second (cut on purpose), and counts
//! everything else that goes wrong.
//!
//! It prints one JSON object per line: `{"phase":"held",…}` once every
//! connection is open (or the ramp's time bound passed), a status line
//! every `report_every`, and `{"phase":"final",…}` at the end. Every loop is
//! bounded by the run's deadline; each connect and round trip by
//! [`IO_TIMEOUT`].

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{watch, Notify, Semaphore},
    time::{sleep, sleep_until, timeout, Instant},
};

use crate::payload;

/// Bound on one connect and on one round trip.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connects in flight while ramping up.
const RAMP_PARALLEL: usize = 64;
/// Errors kept verbatim in the report.
const KEPT_ERRORS: usize = 10;
/// The echo mode byte of `nw-bench server`.
const ECHO: u8 = b'E';

/// What `nw-bench hold` was asked for.
#[derive(Debug, Clone)]
pub struct Hold {
    /// (destination, connections to hold to it).
    pub targets: Vec<(SocketAddr, usize)>,
    /// Each connection does one round trip this often.
    pub interval: Duration,
    /// Connections closed on purpose and reopened every second.
    pub churn: usize,
    /// Bytes per round trip.
    pub size: usize,
    /// How long to hold them once open.
    pub run: Duration,
    /// Bound on opening them all.
    pub ramp: Duration,
    /// How often to print a status line.
    pub report_every: Duration,
}

/// Counters every connection task adds to.
#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    requests: AtomicU64,
    request_failures: AtomicU64,
    churned: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_ERRORS {
            kept.push(what);
        }
    }

    fn report(&self, phase: &str, started: Instant) -> Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "phase": phase,
            "seconds": started.elapsed().as_secs_f64(),
            "open": self.open.load(Ordering::Relaxed),
            "connects": n(&self.connects),
            "connect_failures": n(&self.connect_failures),
            "requests": n(&self.requests),
            "request_failures": n(&self.request_failures),
            "churned": n(&self.churned),
            "errors": *self.errors.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// Runs the client (see the module docs) on a small runtime of its own.
pub fn hold(settings: &Hold) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(settings.clone()))
}

async fn run(s: Hold) -> Result<()> {
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let total: usize = s.targets.iter().map(|(_, n)| n).sum();
    let (stop_tx, stop) = watch::channel(false);
    let ramp = Arc::new(Semaphore::new(RAMP_PARALLEL));
    let mut churn_signals = Vec::with_capacity(total);
    let mut tasks = Vec::with_capacity(total);
    let slots = s
        .targets
        .iter()
        .flat_map(|&(to, n)| std::iter::repeat_n(to, n));
    for (i, to) in slots.enumerate() {
        let churn = Arc::new(Notify::new());
        churn_signals.push(churn.clone());
        let conn = Conn {
            to,
            index: i,
            total,
            settings: s.clone(),
            counts: counts.clone(),
            churn,
            stop: stop.clone(),
            ramp: Some(ramp.clone()),
        };
        tasks.push(tokio::spawn(conn.run()));
    }
    let ramp_end = started + s.ramp;
    while counts.open.load(Ordering::Relaxed) < total && Instant::now() < ramp_end {
        sleep(Duration::from_millis(100)).await;
    }
    report_line(&counts.report("held", started));
    let end = Instant::now() + s.run;
    let mut next_report = Instant::now() + s.report_every;
    let mut cursor = 0usize;
    let mut tick = Instant::now();
    while tick < end {
        tick += Duration::from_secs(1);
        sleep_until(tick.min(end)).await;
        // Round robin: every connection is cut on purpose once per
        // total/churn seconds.
        for _ in 0..s.churn.min(total) {
            churn_signals[cursor % total].notify_one();
            cursor += 1;
        }
        if Instant::now() >= next_report {
            next_report += s.report_every;
            report_line(&counts.report("status", started));
        }
    }
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = timeout(IO_TIMEOUT, task).await;
    }
    report_line(&counts.report("final", started));
    Ok(())
}

/// One held connection slot: connects, does round trips, reconnects when
/// churned (or after a failure, which is counted).
struct Conn {
    to: SocketAddr,
    index: usize,
    total: usize,
    settings: Hold,
    counts: Arc<Counts>,
    churn: Arc<Notify>,
    stop: watch::Receiver<bool>,
    ramp: Option<Arc<Semaphore>>,
}

impl Conn {
    async fn run(mut self) {
        let req = payload(self.settings.size, self.index as u64);
        let mut resp = vec![0u8; self.settings.size];
        // Spread the round trips over the interval (the second one; later
        // ones follow at the interval).
        let mut offset = self
            .settings
            .interval
            .mul_f64(self.index as f64 / self.total.max(1) as f64);
        while !*self.stop.borrow() {
            let Some(mut stream) = self.connect().await else {
                // Counted; do not hammer the proxy.
                self.pause(Duration::from_secs(1)).await;
                continue;
            };
            // The first round trip at once: it proves the whole path (the
            // proxy accepts before it dials); only then is it open.
            match timeout(IO_TIMEOUT, round_trip(&mut stream, &req, &mut resp)).await {
                Ok(Ok(())) => {
                    self.counts.requests.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    self.request_failed(&e.to_string());
                    continue;
                }
                Err(_) => {
                    self.request_failed("timed out");
                    continue;
                }
            }
            self.counts.open.fetch_add(1, Ordering::Relaxed);
            let mut next = Instant::now() + offset;
            offset = self.settings.interval;
            loop {
                tokio::select! {
                    _ = self.stop.changed() => break,
                    () = self.churn.notified() => {
                        self.counts.churned.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    () = sleep_until(next) => {
                        next = Instant::now() + self.settings.interval;
                        match timeout(IO_TIMEOUT, round_trip(&mut stream, &req, &mut resp)).await {
                            Ok(Ok(())) => {
                                self.counts.requests.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => break self.request_failed(&e.to_string()),
                            Err(_) => break self.request_failed("timed out"),
                        }
                    }
                }
            }
            self.counts.open.fetch_sub(1, Ordering::Relaxed);
            drop(stream);
        }
    }

    fn request_failed(&self, e: &str) {
        let what = format!("round trip to {}: {e}", self.to);
        self.counts.fail(&self.counts.request_failures, what);
    }

    /// Sleeps, unless the run stops first.
    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = self.stop.changed() => {}
            () = sleep(d) => {}
        }
    }

    async fn connect(&mut self) -> Option<TcpStream> {
        // Only the first connects are throttled (the ramp); churn
        // reconnects come at the churn rate already.
        let permit = match self.ramp.take() {
            Some(sem) => sem.acquire_owned().await.ok(),
            None => None,
        };
        let r = timeout(IO_TIMEOUT, async {
            let mut s = TcpStream::connect(self.to).await?;
            s.set_nodelay(true)?;
            s.write_all(&[ECHO]).await?;
            Ok::<_, std::io::Error>(s)
        })
        .await;
        drop(permit);
        match r {
            Ok(Ok(s)) => {
                self.counts.connects.fetch_add(1, Ordering::Relaxed);
                Some(s)
            }
            Ok(Err(e)) => {
                let what = format!("connect to {}: {e}", self.to);
                self.counts.fail(&self.counts.connect_failures, what);
                None
            }
            Err(_) => {
                let what = format!("connect to {}: timed out", self.to);
                self.counts.fail(&self.counts.connect_failures, what);
                None
            }
        }
    }
}

async fn round_trip(s: &mut TcpStream, req: &[u8], resp: &mut [u8]) -> std::io::Result<()> {
    s.write_all(req).await?;
    s.read_exact(resp).await?;
    if resp != req {
        return Err(std::io::Error::other("echo differs from request"));
    }
    Ok(())
}

/// One report line on stdout, flushed (the orchestrator reads it live).
fn report_line(v: &Value) {
    crate::print_flush(&format!("{v}\n"));
}
