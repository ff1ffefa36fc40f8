//! The `nodeward` command: tracing, arguments, runtime. Logic lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use nodeward::admin::LogControl;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "nodeward",
    version,
    about = "eBPF-accelerated node proxy for Kubernetes"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node proxy.
    Run {
        /// Configuration file (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Take over from the nodeward running on this node (upgrade):
        /// adopt its pinned programs, share its listeners, let it drain.
        #[arg(long)]
        takeover: bool,
    },
    /// Certificate authority tooling.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Policy tooling for CI/CD pipelines.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the flow map of one or more nodes, merged (from their admin
    /// addresses' `/flows.json`).
    Flows {
        /// A node's admin address, HOST:PORT (repeatable).
        #[arg(long = "admin", required = true)]
        admins: Vec<std::net::SocketAddr>,
        /// Output: a table, the merged JSON, or Graphviz dot.
        #[arg(long, value_enum, default_value_t = FlowsFormat::Table)]
        format: FlowsFormat,
        /// Edges seen within this many seconds.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
        since: u64,
    },
    /// Check which kernel features nodeward needs this kernel has: every
    /// program is loaded and attached to a throwaway cgroup. Exits 1 when a
    /// required one is missing.
    Probe {
        /// Output: a table or JSON.
        #[arg(long, value_enum, default_value_t = ProbeFormat::Table)]
        format: ProbeFormat,
        /// BPF filesystem to try pinning under.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum FlowsFormat {
    Table,
    Json,
    Dot,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory: exit 0 with a summary, or 1 with every error.
    Check {
        /// Directory of policy files.
        dir: PathBuf,
    },
    /// Print, as JSON, what the mesh would decide for one connection or request.
    Explain(Box<ExplainCli>),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "to_namespace"])))]
struct ExplainCli {
    /// Directory of policy files.
    #[arg(long)]
    policies: PathBuf,
    /// Caller: a SPIFFE ID, or `unauthenticated`.
    #[arg(long)]
    from: String,
    /// Caller's IP.
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// Workloads file, to find the destination by --to.
    #[arg(long, requires = "to")]
    workloads: Option<PathBuf>,
    /// Destination IP:PORT (with --workloads).
    #[arg(long, requires = "workloads")]
    to: Option<std::net::SocketAddr>,
    /// Destination namespace (without a workloads file).
    #[arg(long, requires = "port")]
    to_namespace: Option<String>,
    /// Destination labels, k=v,k2=v2.
    #[arg(long, default_value = "", requires = "to_namespace")]
    to_labels: String,
    /// Destination port (with --to-namespace).
    #[arg(long, requires = "to_namespace")]
    port: Option<u16>,
    /// HTTP method.
    #[arg(long)]
    method: Option<String>,
    /// HTTP path (normalised as the proxy does).
    #[arg(long)]
    path: Option<String>,
    /// HTTP host.
    #[arg(long)]
    host: Option<String>,
    /// HTTP header NAME=VALUE (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// What applies when no ALLOW policy selects the workload.
    #[arg(long = "default", default_value = "deny")]
    default_policy: nodeward_policy::DefaultPolicy,
    /// Namespace whose selector-less policies apply mesh-wide.
    #[arg(long, default_value = nodeward::config::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the mesh's root CA (ca.pem, ca.key).
    Init {
        /// SPIFFE trust domain of the mesh.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Directory to write into (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node proxy's intermediate CA (node.pem, node.key, bundle.pem).
    IssueNode {
        /// Directory holding the root CA (from `ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// Node name, as in the workloads file.
        #[arg(long)]
        node: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the intermediate, e.g. `365d`.
        #[arg(long, default_value = "365d")]
        lifetime: String,
        /// Overwrite an existing key.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_usage(e),
    };
    // Kept for `run`, whose admin endpoint changes the filter at run time.
    let (log, writer) = init_tracing(cli.log_format);
    nodeward_identity::tls_config::install_default_provider();
    let code = match cli.command {
        Command::Run { config, takeover } => run(
            &config,
            nodeward::run::RunOptions {
                takeover,
                log: Some(log),
            },
        ),
        Command::Ca(cmd) => ca(cmd),
        Command::Policy(cmd) => policy(cmd),
        Command::Flows {
            admins,
            format,
            since,
        } => flows(&admins, format, std::time::Duration::from_secs(since)),
        Command::Probe { format, bpffs } => probe(format, &bpffs),
    };
    // Flushes the log lines still queued: `exit` runs no destructors.
    drop(writer);
    std::process::exit(code);
}

fn run(config: &std::path::Path, opts: nodeward::run::RunOptions) -> i32 {
    // A blocked SIGTERM/SIGINT inherited from the parent would make the
    // graceful stop impossible.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.add(nix::sys::signal::Signal::SIGTERM);
    let _ = stop.thread_unblock();
    let cfg = match nodeward::config::Config::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            let e = nodeward::run::RunError::from(e);
            eprintln!("nodeward: {}", nodeward::report::one_line(&e));
            return e.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        // Named so that `top -H`, `perf` and /proc tell the proxy's threads
        // from the pods' (at most 15 bytes: the kernel's comm length).
        .thread_name("nodeward-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodeward: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(nodeward::run::run(cfg, opts)) {
        Ok(()) => 0,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("nodeward: {}", nodeward::report::one_line(&e));
            code
        }
    }
}

fn ca(cmd: CaCommand) -> i32 {
    use nodeward_identity::ca;
    let result = match cmd {
        CaCommand::Init {
            trust_domain,
            out,
            force,
        } => ca::init(&trust_domain, &out, force).map(|_| {
            println!(
                "root CA for trust domain {trust_domain} written to {}",
                out.display()
            );
        }),
        CaCommand::IssueNode {
            ca: ca_dir,
            node,
            out,
            lifetime,
            force,
        } => {
            let Some(lifetime) = nodeward::config::parse_duration(&lifetime) else {
                eprintln!("nodeward: --lifetime: {lifetime:?} is not a duration like 365d or 12h");
                return 64;
            };
            ca::issue_node(&ca_dir, &node, &out, lifetime, force).map(|_| {
                println!("node CA for {node} written to {}", out.display());
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nodeward: {}", nodeward::report::one_line(&e));
            1
        }
    }
}

/// `flows`: fetches every node's map, merges and prints it. Unreachable
/// nodes are named on stderr; exit 1 when none answered.
fn probe(format: ProbeFormat, bpffs: &std::path::Path) -> i32 {
    let report = nodeward::probe::run(Some(bpffs));
    match format {
        ProbeFormat::Table => print!("{}", nodeward::probe::table(&report)),
        ProbeFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("nodeward: {e}");
                return 1;
            }
        },
    }
    i32::from(!report.supported)
}

fn flows(admins: &[std::net::SocketAddr], format: FlowsFormat, window: std::time::Duration) -> i32 {
    use nodeward::flows;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodeward: starting the runtime: {e}");
            return 1;
        }
    };
    let mut reports = Vec::new();
    for &addr in admins {
        match runtime.block_on(flows::fetch(addr, window)) {
            Ok(r) => reports.push(r),
            Err(e) => eprintln!("nodeward: {addr}: {e}"),
        }
    }
    let Some(first) = reports.first().map(|r| r.node.clone()) else {
        return 1;
    };
    let merged = flows::merge(&first, reports);
    match format {
        FlowsFormat::Table => print!("{}", flows::table(&merged)),
        FlowsFormat::Dot => print!("{}", flows::dot(&merged)),
        FlowsFormat::Json => match serde_json::to_string_pretty(&merged) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("nodeward: {e}");
                return 1;
            }
        },
    }
    0
}

/// Usage errors exit 2 as clap does, except under `policy`, whose contract
/// with pipelines is 1 for any invalid input.
fn exit_usage(e: clap::Error) -> ! {
    let policy = std::env::args().nth(1).is_some_and(|a| a == "policy");
    let code = match (e.use_stderr(), policy) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 2,
    };
    let _ = e.print();
    std::process::exit(code);
}

fn policy(cmd: PolicyCommand) -> i32 {
    use nodeward_policy::tool;
    let result = match cmd {
        PolicyCommand::Check { dir } => tool::check(&dir).map(|report| {
            for warning in &report.warnings {
                eprintln!("{warning}");
            }
            report.summary
        }),
        PolicyCommand::Explain(args) => explain(*args),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `policy explain`: the policy directory is judged first, then the
/// arguments resolved, then the call evaluated.
fn explain(a: ExplainCli) -> Result<String, nodeward_policy::tool::ToolError> {
    use nodeward::explain::{callee, principal, Target};
    use nodeward_policy::tool;
    let set = tool::load_set(&a.policies, a.default_policy, a.root_namespace)?;
    let to = match (a.workloads, a.to, a.to_namespace, a.port) {
        (Some(workloads), Some(to), _, _) => Target::Workload { workloads, to },
        (_, _, Some(namespace), Some(port)) => Target::Labels {
            namespace,
            labels: a.to_labels,
            port,
        },
        // clap's groups and `requires` make these the only combinations.
        _ => unreachable!("argument groups guarantee a target"),
    };
    let args = tool::ExplainArgs {
        principal: principal(&a.from)?,
        source_ip: a.source_ip,
        to: callee(&to)?,
        method: a.method,
        path: a.path,
        host: a.host,
        headers: a.headers,
    };
    tool::explain(&set, &args).map(|v| v.to_string())
}

/// Installs the subscriber: `NODEWARD_LOG` (default `info`) behind a
/// reload layer, so the admin endpoint can change it at run time.
///
/// Lines go through a queue to a writer thread that batches them into few
/// `write`s (and lingers after each batch, see `nodeward_proxy::sink`): access
/// records are one line per connection, and a worker thread must not stall
/// on stdout, contend for its lock or wake the writer on the connection
/// path. When the queue is full, lines are dropped and counted
/// rather than slowing traffic. Keep the guard until exit: dropping it
/// flushes the queue.
/// Log lines queued for the writer thread before new ones are dropped.
const LOG_QUEUE_LINES: usize = 16 * 1024;

fn init_tracing(format: LogFormat) -> (LogControl, tracing_appender::non_blocking::WorkerGuard) {
    let filter = EnvFilter::try_from_env("NODEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // The default (128 000 lines) preallocates 4 MB; 16 384 lines still
        // absorb a burst of well over 100 ms at the rates the proxy logs.
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("nodeward-log")
        .finish(nodeward_proxy::sink::BatchingWriter::new(std::io::stdout()));
    let dropped = writer.error_counter();
    let output = tracing_subscriber::fmt::layer().with_writer(writer);
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    let control =
        LogControl::new(handle).with_dropped_lines(move || dropped.dropped_lines() as u64);
    (control, guard)
}
