//! `driftguard fd-holder` and the hidden `driftguard supervise`.
//!
//! `fd-holder` keeps a duplicate of every seccomp notify fd the supervisor receives, so that a
//! supervisor crash or upgrade never leaves a container whose execs fail with `ENOSYS`.
//! `supervise` runs the exec supervisor alone (hand-off socket, policy file, image index), for
//! tests and benchmarks; the daemon embeds the same supervisor.
//!
//! Limits: `supervise` prints events as JSON lines on stdout instead of the daemon's sinks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use driftguard_image_index::IndexCache;
use driftguard_policy::{Policy, PolicyStore};
use driftguard_seccomp::{ExecEvent, Supervisor, SupervisorConfig};

/// Arguments of `driftguard fd-holder`.
#[derive(Debug, Args)]
pub struct FdHolderArgs {
    /// Unix socket to listen on (its directory is made root-only).
    #[arg(long, default_value = "/run/driftguard/fd-holder.sock")]
    pub socket: PathBuf,
}

/// Arguments of `driftguard supervise`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Hand-off socket runc connects to (`listenerPath`).
    #[arg(long)]
    pub socket: PathBuf,
    /// The fd holder's socket.
    #[arg(long)]
    pub holder: Option<PathBuf>,
    /// Policy file; the built-in default policy when absent.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Directory of the image index cache.
    #[arg(long, default_value = "/var/lib/driftguard/index")]
    pub state_dir: PathBuf,
    /// Longest decision, in milliseconds, before the failure policy answers.
    #[arg(long, default_value_t = 2000)]
    pub decision_timeout_ms: u64,
}

/// Runs the fd holder until killed.
pub fn run_fd_holder(args: FdHolderArgs) -> anyhow::Result<ExitCode> {
    driftguard_seccomp::holder::run_holder(&args.socket)
        .with_context(|| format!("fd holder on {}", args.socket.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the supervisor until SIGINT or SIGTERM.
pub fn run_supervise(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let policy = match &args.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default_policy(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(supervise(args, policy))?;
    Ok(ExitCode::SUCCESS)
}

async fn supervise(args: SuperviseArgs, policy: Policy) -> anyhow::Result<()> {
    let mut config = SupervisorConfig::new(args.socket, args.holder);
    config.decision_timeout = std::time::Duration::from_millis(args.decision_timeout_ms);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ExecEvent>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Ok(line) = serde_json::to_string(&event) {
                println!("{line}");
            }
        }
    });
    let supervisor = Supervisor::new(
        config,
        Arc::new(PolicyStore::new(policy)),
        Arc::new(IndexCache::new(args.state_dir)),
        Arc::new(tx),
    );
    supervisor.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
