//! Command-line interface: one module per subcommand family.

pub mod daemon;
pub mod events;
pub mod fdholder;
pub mod index;
pub mod nriplugin;
pub mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Binary drift detection and blocking for containerd nodes.
#[derive(Debug, Parser)]
#[command(name = "driftguard", version, about)]
pub struct Cli {
    /// Format of diagnostic logs on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How diagnostic logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print version and build information.
    Version,
    /// Run the node agent: NRI plugin, exec supervisor, policy watcher and alert sinks.
    Daemon(daemon::DaemonArgs),
    /// The runc wrapper for containerd's `BinaryName` (also installed as `driftguard-runc`).
    Runc(daemon::RuncArgs),
    /// Print the merged index of image layer directories (top layer first).
    Index(index::IndexArgs),
    /// Print what the image index says about one path.
    Check(index::CheckArgs),
    /// Validate, show and change the drift policy file.
    Policy(policy::PolicyArgs),
    /// Show recent alerts from the daemon's JSON lines file.
    Events(events::EventsArgs),
    /// Keep duplicates of the supervisor's seccomp notify fds across its restarts.
    FdHolder(fdholder::FdHolderArgs),
    /// Run the NRI plugin alone: launched by containerd from its plugin directory, or external.
    NriPlugin(nriplugin::NriPluginArgs),
    /// Check or show the daemon's configuration file.
    Config(nriplugin::ConfigArgs),
    /// Run the exec supervisor alone (tests and benchmarks).
    #[command(hide = true)]
    Supervise(fdholder::SuperviseArgs),
}

/// Sets up `tracing` on stderr; the filter comes from `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("driftguard {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) => daemon::run(args),
        Command::Runc(args) => crate::wrapper::run(args.args),
        Command::Index(args) => index::run_index(args),
        Command::Check(args) => index::run_check(args),
        Command::Policy(args) => policy::run(args),
        Command::Events(args) => events::run(args),
        Command::FdHolder(args) => fdholder::run_fd_holder(args),
        Command::Supervise(args) => fdholder::run_supervise(args),
        Command::NriPlugin(args) => nriplugin::run(args),
        Command::Config(args) => nriplugin::run_config(args),
    }
}
