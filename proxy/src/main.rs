//! The `nodeward` command: tracing, arguments, runtime. Logic lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

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
    },
    /// Certificate authority tooling.
    #[command(subcommand)]
    Ca(CaCommand),
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
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let code = match cli.command {
        Command::Run { config } => run(&config),
        Command::Ca(cmd) => ca(cmd),
    };
    std::process::exit(code);
}

fn run(config: &std::path::Path) -> i32 {
    // A blocked SIGTERM/SIGINT inherited from the parent would make the
    // graceful stop impossible.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.add(nix::sys::signal::Signal::SIGTERM);
    let _ = stop.thread_unblock();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodeward: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(nodeward::run::run(config)) {
        Ok(()) => 0,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("nodeward: {:#}", anyhow::Error::new(e));
            code
        }
    }
}

fn ca(cmd: CaCommand) -> i32 {
    use nodeward::identity::ca;
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
            eprintln!("nodeward: {:#}", anyhow::Error::new(e));
            1
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("NODEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
