//! The programs the test cluster runs inside pods and nodes.
//!
//! `nw-pod [--netns NAME] [--cgroup DIR] <command>` first joins the cgroup and
//! the network namespace (before any thread exists, so every later thread
//! inherits both), then runs a small TCP tool or execs a program. Output is
//! one JSON object per line so the harness can assert on it.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nodeward_tests::payload;
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    join: nodeward_tests::JoinArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replace this process with PROGRAM (after joining netns and cgroup).
    Exec {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// Echo server: echoes every byte, then after the client's EOF sends `#eof:<n>`.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connect, send N bytes, half-close, read to EOF, and report.
    Call {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        send: usize,
        /// Repeat this many times (sequential short connections).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Send in this many pieces...
        #[arg(long, default_value_t = 1)]
        chunks: usize,
        /// ...pausing this long between them (a long-lived connection).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        /// Send this text repeated instead of pseudo-random bytes.
        #[arg(long)]
        marker: Option<String>,
        /// Pause between repeated connections (a steady stream).
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
        /// Send only this many bytes, then reset the connection (SO_LINGER
        /// 0) and exit without reading: a client dying mid-stream.
        #[arg(long)]
        abort_after: Option<usize>,
    },
    /// Minimal HTTP/1.1 server: 200 for every request, keep-alive; logs
    /// `{"request": "METHOD /path"}` per request.
    HttpServe {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sends each REQUEST ("METHOD /path") in turn on one HTTP/1.1
    /// connection; reports the statuses.
    HttpRequests {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long = "request", required = true)]
        requests: Vec<String>,
        /// Pause between requests on the keep-alive connection.
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
    },
    /// HTTP/1.1 and HTTP/2 (prior knowledge) server: 200 `ok` for every
    /// request, `/big` 1 MiB; logs `{"request": "METHOD /path"}` per request.
    HyperServe {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connects to ADDR and relays stdin to it and it to stdout, raw, until
    /// it closes: a pod speaking whatever bytes a test writes.
    Pipe {
        #[arg(long)]
        to: SocketAddr,
    },
    /// HTTP/1.0 GET of PATH from ADDR; prints the body.
    HttpGet {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        path: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A parent (the demo) may block SIGINT/SIGTERM to wait for them; a
    // blocked mask survives exec, so clear it for what runs here.
    nix::sys::signal::SigSet::all()
        .thread_unblock()
        .context("unblocking signals")?;
    cli.join.join()?;
    match cli.command {
        Cmd::Exec { argv } => Err(Command::new(&argv[0]).args(&argv[1..]).exec().into()),
        Cmd::Echo { listen } => echo(listen),
        Cmd::Call {
            to,
            send,
            count,
            chunks,
            pace_ms,
            marker,
            gap_ms,
            abort_after,
        } => {
            if let Some(n) = abort_after {
                println!("{}", abort(to, &payload(send, 0)[..n.min(send)]));
                return Ok(());
            }
            let mut ok = 0;
            let mut failures = Vec::new();
            for i in 0..count {
                if i > 0 && gap_ms > 0 {
                    std::thread::sleep(Duration::from_millis(gap_ms));
                }
                let data = match &marker {
                    Some(m) => m.bytes().cycle().take(send).collect(),
                    None => payload(send, i as u64),
                };
                let pace = Pace {
                    chunks: chunks.max(1),
                    pause: Duration::from_millis(pace_ms),
                };
                let report = call(to, data, &pace);
                if report["intact"] == true {
                    ok += 1;
                } else if failures.len() < 5 {
                    failures.push(report.clone());
                }
                if count == 1 {
                    println!("{report}");
                }
            }
            if count > 1 {
                println!(
                    "{}",
                    json!({"count": count, "intact": ok, "failures": failures})
                );
            }
            Ok(())
        }
        Cmd::HttpGet { addr, path } => http_get(addr, &path),
        Cmd::HttpServe { listen } => http_serve(listen),
        Cmd::HyperServe { listen } => hyper_serve(listen),
        Cmd::Pipe { to } => pipe(to),
        Cmd::HttpRequests {
            to,
            requests,
            gap_ms,
        } => {
            println!(
                "{}",
                http_requests(to, &requests, Duration::from_millis(gap_ms))
            );
            Ok(())
        }
    }
}

fn hyper_serve(addr: SocketAddr) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        println!("{}", json!({"listening": addr.to_string()}));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                println!(
                    "{}",
                    json!({"request": format!("{} {}", req.method(), req.uri().path())})
                );
                let body = if req.uri().path() == "/big" {
                    bytes::Bytes::from(vec![b'x'; 1024 * 1024])
                } else {
                    bytes::Bytes::from_static(b"ok\n")
                };
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    body,
                )))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn pipe(to: SocketAddr) -> Result<()> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .with_context(|| format!("connect {to}"))?;
    // A peer that stops reading must not hang the test writing to us.
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut to_peer = stream.try_clone()?;
    // Not joined: it may sit in a read of stdin when the peer closes.
    std::thread::spawn(move || std::io::copy(&mut std::io::stdin().lock(), &mut to_peer));
    let (mut from, mut out) = (stream, std::io::stdout().lock());
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    // Ends the process, and so the stdin thread: the peer closed.
    Ok(())
}

fn echo(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("{}", json!({"listening": addr.to_string()}));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let peer = stream
            .peer_addr()
            .map(|p| canonical(p).to_string())
            .unwrap_or_default();
        println!("{}", json!({"accepted": peer}));
        std::thread::spawn(move || {
            let (mut total, mut eof) = (0, false);
            let end = echo_one(stream, &mut total, &mut eof);
            // How the connection ended, for tests that tell a clean close
            // from a reset.
            let error = end.err().map(|e| format!("{:?}", e.kind()));
            println!(
                "{}",
                json!({"ended": peer, "received": total, "eof": eof, "error": error})
            );
        });
    }
    Ok(())
}

/// Echoes until end of stream, then reports the bytes received; `total`
/// counts them and `eof` says whether the peer's FIN came, also when the
/// connection fails.
fn echo_one(mut stream: TcpStream, total: &mut usize, eof: &mut bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            *eof = true;
            break;
        }
        *total += n;
        stream.write_all(&buf[..n])?;
    }
    stream.write_all(format!("#eof:{total}").as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// How a call spreads its writes over time.
struct Pace {
    chunks: usize,
    pause: Duration,
}

/// One connection: returns a JSON report; never panics on network errors.
fn call(to: SocketAddr, data: Vec<u8>, pace: &Pace) -> serde_json::Value {
    let send = data.len();
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({"connected": false, "error": e.to_string(), "intact": false}),
    };
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let writer = stream.try_clone().map(|mut w| {
        let data = data.clone();
        let (chunks, pause) = (pace.chunks, pace.pause);
        std::thread::spawn(move || -> std::io::Result<()> {
            let size = data.len().div_ceil(chunks).max(1);
            for (i, piece) in data.chunks(size).enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                w.write_all(piece)?;
            }
            w.shutdown(Shutdown::Write)
        })
    });
    let mut received = Vec::new();
    let (read, spurious_eagain) = read_to_end(&mut stream, &mut received);
    let wrote = match writer {
        Ok(h) => h
            .join()
            .map_err(|_| "writer panicked".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    let mut expected = data;
    expected.extend_from_slice(format!("#eof:{send}").as_bytes());
    json!({
        "connected": true,
        "local": local,
        "sent": send,
        "received": received.len(),
        "read_error": read.err().map(|e| e.to_string()),
        "write_error": wrote.err(),
        "intact": received == expected,
        "spurious_eagain": spurious_eagain,
    })
}

/// `read_to_end` that retries the `EAGAIN` a blocking socket returns before
/// its read timeout (30 s) is up, and counts them: a spliced (sockmap)
/// socket's `recvmsg` gives up after one wakeup, data or not.
fn read_to_end(stream: &mut TcpStream, out: &mut Vec<u8>) -> (std::io::Result<usize>, u64) {
    let started = std::time::Instant::now();
    let mut spurious = 0;
    loop {
        match stream.read_to_end(out) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && started.elapsed() < Duration::from_secs(29) =>
            {
                spurious += 1;
            }
            r => return (r, spurious),
        }
    }
}

/// Connects, writes `data`, then closes with a reset (linger 0).
fn abort(to: SocketAddr, data: &[u8]) -> serde_json::Value {
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({"connected": false, "error": e.to_string()}),
    };
    let wrote = stream.write_all(data);
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let set = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    drop(stream);
    json!({
        "connected": true,
        "sent": data.len(),
        "write_error": wrote.err().map(|e| e.to_string()),
        "linger_error": set.err().map(|e| e.to_string()),
    })
}

fn http_get(addr: SocketAddr, path: &str) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("bad response")
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("{head}");
    }
    print!("{body}");
    Ok(())
}

fn http_serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("{}", json!({"listening": addr.to_string()}));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || serve_http_conn(stream));
    }
    Ok(())
}

/// Answers requests on one connection until EOF or a malformed request.
fn serve_http_conn(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(head) = read_head(&mut reader)? {
        let line = head.lines().next().unwrap_or("").to_owned();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut body = vec![0u8; content_length(&head)];
        reader.read_exact(&mut body)?;
        // The trace context the pod got (tracing e2e), when it got one.
        let traceparent = header_value(&head, "traceparent");
        let tracestate = header_value(&head, "tracestate");
        println!(
            "{}",
            json!({"request": format!("{method} {target}"), "traceparent": traceparent, "tracestate": tracestate})
        );
        let headers: serde_json::Map<String, serde_json::Value> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), json!(v.trim())))
            .collect();
        let reply =
            json!({"method": method, "path": target, "body": body.len(), "headers": headers})
                .to_string();
        // One write, without Nagle: a response in pieces would wait for
        // the client's delayed ACK (40 ms a request in the bench).
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        out.write_all(response.as_bytes())?;
    }
    Ok(())
}

/// Reads a request or response head (through the blank line); None at EOF.
fn read_head(r: &mut impl std::io::BufRead) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" || line == "\n" {
            return Ok(Some(head));
        }
        head.push_str(&line);
    }
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One connection, requests in turn; a status of 0 means no response.
fn http_requests(to: SocketAddr, requests: &[String], gap: Duration) -> serde_json::Value {
    let stream = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({"connected": false, "error": e.to_string(), "statuses": []}),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    let mut headers = Vec::new();
    let mut error = None;
    let (Ok(read_half), mut out) = (stream.try_clone(), stream) else {
        return json!({"connected": true, "error": "clone", "statuses": []});
    };
    let mut reader = std::io::BufReader::new(read_half);
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        // `METHOD /path`, then extra header lines: each after a `|` on the
        // first line, or on lines of their own after it.
        let (line, more) = r.split_once('\n').unwrap_or((r, ""));
        let mut fields = line.split('|');
        let first = fields.next().unwrap_or(line);
        let extra: String = fields
            .chain(more.lines())
            .map(|h| format!("{h}\r\n"))
            .collect();
        let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
        let body = if method == "POST" { "payload" } else { "" };
        let sent = write!(
            out,
            "{method} {path} HTTP/1.1\r\nhost: {to}\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let reply = sent.and_then(|()| read_response(&mut reader));
        match reply {
            Ok((status, text, head)) => {
                statuses.push(status);
                bodies.push(text);
                headers.push(head);
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    while statuses.len() < requests.len() {
        statuses.push(0);
    }
    json!({"connected": true, "statuses": statuses, "bodies": bodies, "headers": headers, "error": error})
}

fn read_response(
    r: &mut impl std::io::BufRead,
) -> std::io::Result<(u16, String, serde_json::Value)> {
    let head = read_head(r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), json!(v.trim())))
        .collect();
    let mut body = vec![0u8; content_length(&head)];
    r.read_exact(&mut body)?;
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        serde_json::Value::Object(headers),
    ))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
