//! `driftguard daemon`: runs the node agent (see the `daemon` module).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Config;

/// Arguments of `driftguard daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file (default: $DRIFTGUARD_CONFIG, else /etc/driftguard/config.yaml when it
    /// exists, else built-in defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Loads and checks the configuration and runs the daemon until SIGTERM or SIGINT; a bad value
/// stops it before anything starts.
pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve_valid(args.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(crate::daemon::run(config));
    // Tasks serving running containers are dropped, not awaited: the fd holder keeps their fds.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `driftguard runc`, documented here; the wrapper reads them itself, before any
/// parsing, so runc's own flags pass through untouched.
#[derive(Debug, Args)]
pub struct RuncArgs {
    /// runc's arguments, passed on unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}
