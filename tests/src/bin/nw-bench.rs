//! `nw-bench`: the load generator and pod server behind `cargo xtask bench`
//! and `cargo xtask soak`.
//!
//! `nw-bench [--netns NAME] [--cgroup DIR] <command>` first joins the cgroup
//! and the network namespace (before any thread exists, so every later
//! thread inherits both, as `nw-pod` does) and raises the soft
//! `RLIMIT_NOFILE` (see [`raise_nofile`]). `run` and `soak` are the
//! orchestrators ([`nodeward_tests::bench`], [`nodeward_tests::soak`]); the
//! other commands run inside pods and print one JSON object per line.
//!
//! Wire protocol of `server`: the client's first byte picks the mode. `E`
//! echoes every later byte until EOF; `S` discards everything until EOF and
//! then answers with the byte count (u64, little endian). Every client loop
//! is bounded both by a count and by a deadline, and keeps its latencies in
//! a vector allocated before the timed loop.

use std::{
    io::{BufRead, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nodeward_tests::{bench, payload, soak};
use serde_json::{json, Value};

/// Mode byte: echo.
const ECHO: u8 = b'E';
/// Mode byte: sink, then report the byte count.
const SINK: u8 = b'S';
/// Bulk write size.
const BULK_CHUNK: usize = 256 * 1024;
/// Connect timeout, and read/write timeout on every client socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    join: nodeward_tests::JoinArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the cluster and HAProxies, run every scenario on every path,
    /// write `bench.md` and `bench.json` to OUT.
    Run {
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Duration of each timed scenario.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Idle meshed connections for the memory scenario.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Run only these scenarios (bulk1, bulk8, rr1, rr64, connrate,
        /// idle, httptrace); the others show as missing in the reports.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The proxies' `runtime.workerThreads` (default: theirs).
        #[arg(long)]
        worker_threads: Option<usize>,
    },
    /// Build the cluster, hold connections with churn and traffic for
    /// MINUTES while sampling both proxies; write `soak.csv`, `soak.png`
    /// and `soak.json` to OUT; fail on a leak or a failed connection.
    Soak {
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Connections held, both client pods together.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections closed and reopened every second (default 1%).
        #[arg(long)]
        churn: Option<usize>,
        /// Seconds between two round trips on one connection.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
    },
    /// Holds connections (`--to ADDR=N`, repeatable) with churn and round
    /// trips (see `nodeward_tests::soak::hold`).
    Hold {
        #[arg(long, value_parser = parse_target, required = true)]
        to: Vec<(SocketAddr, usize)>,
        #[arg(long, default_value_t = 100)]
        churn: usize,
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        seconds: f64,
        /// Bound on opening every connection.
        #[arg(long, default_value_t = 120.0)]
        ramp: f64,
        /// Seconds between status lines.
        #[arg(long, default_value_t = 10.0)]
        report_every: f64,
    },
    /// Echo/sink server (see the module docs).
    Server {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// STREAMS connections each send as fast as they can for SECONDS.
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Upper bound on bytes per stream.
        #[arg(long, default_value_t = 64 << 30)]
        max_bytes: u64,
    },
    /// CONNS connections each do SIZE-byte echo round trips, at most
    /// REQUESTS each, for at most SECONDS.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// HTTP/1.1 `GET /` round trips on one connection (an `nw-pod
    /// http-serve` echo), at most REQUESTS, for at most SECONDS; with
    /// `--bearer`, each carries `Authorization: Bearer <token>`.
    HttpRr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bearer: Option<String>,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// THREADS loops of: connect, SIZE-byte echo, close; at most MAX
    /// connections in all, for at most SECONDS.
    Connrate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 50_000)]
        max: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Opens connections up to each of STAGES (checked with a one-byte
    /// echo), prints `{"open": n}` and waits for a line on stdin.
    Idle {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        stages: Vec<usize>,
        /// Bound on the time spent opening connections, all stages together.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.join.join()?;
    raise_nofile();
    let report = match cli.command {
        Cmd::Run {
            out,
            seconds,
            idle,
            only,
            worker_threads,
        } => {
            let settings = bench::Settings {
                out_dir: out,
                seconds,
                idle,
                bench_bin: std::env::current_exe()?,
                only,
                worker_threads,
            };
            return bench::run(&settings);
        }
        Cmd::Soak {
            out,
            minutes,
            connections,
            churn,
            interval,
        } => {
            return soak::run(&soak::Settings {
                out_dir: out,
                run: secs(minutes * 60.0),
                connections,
                churn: churn.unwrap_or(connections / 100),
                interval: secs(interval),
                bench_bin: std::env::current_exe()?,
            })
        }
        Cmd::Hold {
            to,
            churn,
            interval,
            size,
            seconds,
            ramp,
            report_every,
        } => {
            return soak::hold::hold(&soak::hold::Hold {
                targets: to,
                interval: secs(interval),
                churn,
                size,
                run: secs(seconds),
                ramp: secs(ramp),
                report_every: secs(report_every),
            })
        }
        Cmd::Server { listen } => return server(listen),
        Cmd::Idle {
            to,
            stages,
            seconds,
        } => return idle(to, &stages, secs(seconds)),
        Cmd::Bulk {
            to,
            streams,
            seconds,
            max_bytes,
        } => bulk(to, streams, secs(seconds), max_bytes),
        Cmd::Rr {
            to,
            conns,
            size,
            requests,
            seconds,
        } => rr(to, conns, size, requests, secs(seconds)),
        Cmd::Connrate {
            to,
            threads,
            size,
            max,
            seconds,
        } => connrate(to, threads, size, max, secs(seconds)),
        Cmd::HttpRr {
            to,
            bearer,
            requests,
            seconds,
        } => http_rr(to, bearer, requests, secs(seconds)),
    };
    println!("{report}");
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// 10k idle connections need more than the usual 1024 descriptors: the
/// soft limit goes up to the hard one and, where the process may (root),
/// both go up to [`WANTED_NOFILE`] (within `fs.nr_open`). Only this process
/// and its children: no system-wide setting changes.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let wanted = WANTED_NOFILE.min(nr_open);
    if wanted > hard && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The descriptors `nw-bench` asks for: a client holding the whole soak's
/// 10 000 connections with room for its churn.
const WANTED_NOFILE: u64 = 1 << 16;

/// `ADDR=N` of `hold --to`.
fn parse_target(s: &str) -> Result<(SocketAddr, usize), String> {
    let (addr, n) = s.split_once('=').ok_or("expected ADDR=N")?;
    Ok((
        addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        n.parse().map_err(|e| format!("{n}: {e}"))?,
    ))
}

fn server(addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr).with_context(|| format!("bind {addr}"))?;
        let listener = socket.listen(4096)?;
        println!("{}", json!({"listening": addr.to_string()}));
        std::io::stdout().flush()?;
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve_conn(s));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn serve_conn(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    match mode[0] {
        ECHO => {
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
        SINK => {
            let mut buf = vec![0u8; BULK_CHUNK];
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_le_bytes()).await?;
            s.shutdown().await
        }
        _ => Ok(()),
    }
}

fn connect(to: SocketAddr, mode: u8) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(&[mode])?;
    Ok(s)
}

/// What one client thread did.
#[derive(Default)]
struct Outcome {
    /// Units of work (bytes or requests) in the timed window.
    done: u64,
    /// Units of work over the thread's whole life (warm-up included), for
    /// CPU per unit.
    total: u64,
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    finished: Option<Instant>,
}

impl Outcome {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// Runs `n` client threads that start their timed loops together; returns
/// their outcomes and the start instant.
fn fan_out(
    n: usize,
    work: impl Fn(usize, &Barrier) -> Outcome + Send + Sync + 'static,
) -> (Vec<Outcome>, Instant) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, work) = (barrier.clone(), work.clone());
            std::thread::spawn(move || work(i, &barrier))
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let outcomes = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| {
                let mut o = Outcome::default();
                o.fail("client thread panicked");
                o
            })
        })
        .collect();
    (outcomes, start)
}

fn bulk(to: SocketAddr, streams: usize, dur: Duration, max_bytes: u64) -> Value {
    let (outcomes, start) = fan_out(streams, move |i, barrier| {
        let mut o = Outcome::default();
        let chunk = payload(BULK_CHUNK, i as u64);
        let stream = connect(to, SINK);
        barrier.wait();
        let mut s = match stream {
            Ok(s) => s,
            Err(e) => {
                o.fail(e);
                return o;
            }
        };
        let deadline = Instant::now() + dur;
        let mut sent = 0u64;
        while sent < max_bytes && Instant::now() < deadline {
            if let Err(e) = s.write_all(&chunk) {
                o.fail(e);
                return o;
            }
            sent += BULK_CHUNK as u64;
        }
        let mut ack = [0u8; 8];
        let acked = s
            .shutdown(Shutdown::Write)
            .and_then(|()| s.read_exact(&mut ack));
        o.finished = Some(Instant::now());
        match acked {
            Ok(()) if u64::from_le_bytes(ack) == sent => o.done = sent,
            Ok(()) => o.fail(format!(
                "server counted {} of {sent} bytes",
                u64::from_le_bytes(ack)
            )),
            Err(e) => o.fail(e),
        }
        o.total = o.done;
        o
    });
    let elapsed = elapsed(&outcomes, start);
    let bytes: u64 = outcomes.iter().map(|o| o.done).sum();
    let mut v = summary(&outcomes, elapsed);
    v["bytes"] = json!(bytes);
    v["gbit_per_s"] = json!(bytes as f64 * 8.0 / elapsed / 1e9);
    v
}

fn rr(to: SocketAddr, conns: usize, size: usize, requests: usize, dur: Duration) -> Value {
    let warmup = (requests / 10).min(200);
    let (outcomes, start) = fan_out(conns, move |i, barrier| {
        let mut o = Outcome {
            latencies_ns: Vec::with_capacity(requests),
            ..Outcome::default()
        };
        let req = payload(size, i as u64);
        let mut resp = vec![0u8; size];
        let stream = connect(to, ECHO);
        let mut s = match stream {
            Ok(mut s) => match (0..warmup).try_for_each(|_| round_trip(&mut s, &req, &mut resp)) {
                Ok(()) => Some(s),
                Err(e) => {
                    o.fail(e);
                    None
                }
            },
            Err(e) => {
                o.fail(e);
                None
            }
        };
        barrier.wait();
        let Some(s) = s.as_mut() else { return o };
        let deadline = Instant::now() + dur;
        while o.latencies_ns.len() < requests && Instant::now() < deadline {
            let t0 = Instant::now();
            if let Err(e) = round_trip(s, &req, &mut resp) {
                o.fail(e);
                break;
            }
            o.latencies_ns.push(t0.elapsed().as_nanos() as u64);
        }
        o.finished = Some(Instant::now());
        o.done = o.latencies_ns.len() as u64;
        o.total = o.done + warmup as u64;
        o
    });
    let elapsed = elapsed(&outcomes, start);
    let mut v = summary(&outcomes, elapsed);
    let done: u64 = outcomes.iter().map(|o| o.done).sum();
    v["requests"] = json!(done);
    v["requests_per_s"] = json!(done as f64 / elapsed);
    v
}

/// One connection of sequential GETs; a status other than 200 is an error.
fn http_rr(to: SocketAddr, bearer: Option<String>, requests: usize, dur: Duration) -> Value {
    let auth = bearer.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!("GET /bench HTTP/1.1\r\nhost: {to}\r\n{auth}\r\n").into_bytes();
    let warmup = (requests / 10).min(200);
    let (outcomes, start) = fan_out(1, move |_, barrier| {
        let mut o = Outcome {
            latencies_ns: Vec::with_capacity(requests),
            ..Outcome::default()
        };
        let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT).and_then(|s| {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(s)
        });
        let mut s = match stream {
            Ok(s) => Some(std::io::BufReader::new(s)),
            Err(e) => {
                o.fail(e);
                None
            }
        };
        if let Some(r) = s.as_mut() {
            if let Err(e) = (0..warmup).try_for_each(|_| http_round_trip(r, &req)) {
                o.fail(e);
                s = None;
            }
        }
        barrier.wait();
        let Some(r) = s.as_mut() else { return o };
        let deadline = Instant::now() + dur;
        while o.latencies_ns.len() < requests && Instant::now() < deadline {
            let t0 = Instant::now();
            if let Err(e) = http_round_trip(r, &req) {
                o.fail(e);
                break;
            }
            o.latencies_ns.push(t0.elapsed().as_nanos() as u64);
        }
        o.finished = Some(Instant::now());
        o.done = o.latencies_ns.len() as u64;
        o.total = o.done + warmup as u64;
        o
    });
    let elapsed = elapsed(&outcomes, start);
    let mut v = summary(&outcomes, elapsed);
    let done: u64 = outcomes.iter().map(|o| o.done).sum();
    v["requests"] = json!(done);
    v["requests_per_s"] = json!(done as f64 / elapsed);
    v
}

/// Sends `req` and reads one response (head, then `content-length` bytes).
fn http_round_trip(r: &mut std::io::BufReader<TcpStream>, req: &[u8]) -> std::io::Result<()> {
    use std::io::BufRead;
    r.get_mut().write_all(req)?;
    let (mut status, mut length) = (String::new(), 0usize);
    r.read_line(&mut status)?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("status: {}", status.trim())));
    }
    Ok(())
}

fn round_trip(s: &mut TcpStream, req: &[u8], resp: &mut [u8]) -> std::io::Result<()> {
    s.write_all(req)?;
    s.read_exact(resp)?;
    if resp != req {
        return Err(std::io::Error::other("echo differs from request"));
    }
    Ok(())
}

fn connrate(to: SocketAddr, threads: usize, size: usize, max: usize, dur: Duration) -> Value {
    let issued = Arc::new(AtomicUsize::new(0));
    let (outcomes, start) = fan_out(threads, move |i, barrier| {
        let mut o = Outcome {
            latencies_ns: Vec::with_capacity(max.div_ceil(threads.max(1)) + max / 4),
            ..Outcome::default()
        };
        let req = payload(size, i as u64);
        let mut resp = vec![0u8; size];
        barrier.wait();
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline
            && o.latencies_ns.len() < o.latencies_ns.capacity()
            && issued.fetch_add(1, Ordering::Relaxed) < max
        {
            let t0 = Instant::now();
            let r = connect(to, ECHO).and_then(|mut s| round_trip(&mut s, &req, &mut resp));
            match r {
                Ok(()) => o.latencies_ns.push(t0.elapsed().as_nanos() as u64),
                Err(e) => o.fail(e),
            }
            if o.errors > 100 {
                break;
            }
        }
        o.finished = Some(Instant::now());
        o.done = o.latencies_ns.len() as u64;
        o.total = o.done;
        o
    });
    let elapsed = elapsed(&outcomes, start);
    let mut v = summary(&outcomes, elapsed);
    let done: u64 = outcomes.iter().map(|o| o.done).sum();
    v["connections"] = json!(done);
    v["connections_per_s"] = json!(done as f64 / elapsed);
    v
}

fn idle(to: SocketAddr, stages: &[usize], dur: Duration) -> Result<()> {
    let most = stages.iter().copied().max().unwrap_or(0);
    let mut conns = Vec::with_capacity(most);
    let start = Instant::now();
    let deadline = start + dur;
    let mut error = None;
    let mut stdin = std::io::stdin().lock();
    for &stage in stages {
        while error.is_none() && conns.len() < stage && Instant::now() < deadline {
            let mut one = [0u8; 1];
            let r = connect(to, ECHO).and_then(|mut s| {
                s.write_all(b".")?;
                s.read_exact(&mut one)?;
                Ok(s)
            });
            match r {
                Ok(s) => conns.push(s),
                Err(e) => error = Some(format!("after {} connections: {e}", conns.len())),
            }
        }
        let report = json!({
            "open": conns.len(),
            "target": stage,
            "seconds": start.elapsed().as_secs_f64(),
            "error": error,
            "timed_out": conns.len() < stage && error.is_none(),
        });
        println!("{report}");
        std::io::stdout().flush()?;
        let mut line = String::new();
        stdin.read_line(&mut line)?;
    }
    Ok(())
}

/// When the last thread finished, in seconds since `start`.
fn elapsed(outcomes: &[Outcome], start: Instant) -> f64 {
    outcomes
        .iter()
        .filter_map(|o| o.finished)
        .max()
        .map_or(0.0, |t| (t - start).as_secs_f64())
        .max(1e-9)
}

/// Common fields: errors, elapsed time, totals and latency percentiles.
fn summary(outcomes: &[Outcome], elapsed: f64) -> Value {
    let mut all: Vec<u64> = outcomes
        .iter()
        .flat_map(|o| o.latencies_ns.iter().copied())
        .collect();
    all.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let n = all.len();
        (n > 0).then(|| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            all[rank - 1] as f64 / 1e3
        })
    };
    json!({
        "seconds": elapsed,
        "total": outcomes.iter().map(|o| o.total).sum::<u64>(),
        "errors": outcomes.iter().map(|o| o.errors).sum::<u64>(),
        "first_error": outcomes.iter().find_map(|o| o.first_error.clone()),
        "samples": all.len(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
    })
}
