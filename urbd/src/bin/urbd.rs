//! `urbd`: the urbd daemon. `urbd serve` exports one local disk over NBD.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "urbd",
    version,
    about = "urbd: a userspace replicated block device"
)]
struct Cli {
    /// Worker threads for networking (the disk engine has its own thread).
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export one local disk over NBD, unreplicated (like qemu-nbd).
    Serve(urbd::serve::ServeArgs),
    /// Run the daemon of one replicated resource in the foreground (`urbdadm up` starts it).
    Run(urbd::daemon::RunArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // The daemon persists metadata with block_in_place, which needs worker threads.
    let threads = match cli.command {
        Command::Run(_) => cli.threads.max(2),
        Command::Serve(_) => cli.threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(urbd::serve::run(args)),
        Command::Run(args) => runtime.block_on(urbd::daemon::run(args)),
    }
}
