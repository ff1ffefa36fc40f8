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
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let code = match cli.command {
        Command::Run { config } => run(&config),
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
