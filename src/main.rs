//! `driftguard`: binary drift detection and blocking for containerd nodes.
//!
//! This binary is thin: it parses the command line and hands each subcommand to the crate or
//! module that implements it. The runc wrapper (`driftguard runc …`, or this binary installed
//! as `driftguard-runc`) is recognised before any parsing, so runc's arguments reach runc
//! exactly as the shim wrote them. So is a launch by containerd as a pre-registered NRI
//! plugin (no arguments, `NRI_PLUGIN_SOCKET` set), which runs `driftguard nri-plugin`.

mod cli;
mod config;
mod daemon;
mod wrapper;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if argv0.as_deref() == Some("driftguard-runc".as_ref()) {
        return run_wrapper(args.split_off(1));
    }
    if args.get(1).map(|a| a == "runc").unwrap_or(false) {
        return run_wrapper(args.split_off(2));
    }

    // containerd launches a pre-registered NRI plugin with no arguments and the connected
    // socket in NRI_PLUGIN_SOCKET; stderr is /dev/null then, so it logs to a file.
    if args.len() == 1 && cli::nriplugin::launched_by_runtime() {
        return cli::nriplugin::run_launched(None);
    }

    let cli = cli::Cli::parse();
    if !cli::nriplugin::owns_logging(&cli.command) {
        cli::init_tracing(cli.log_format);
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("driftguard: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The wrapper logs warnings only: runc's callers read its stderr as error text.
fn run_wrapper(args: Vec<OsString>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::new("warn");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match wrapper::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::from(1)
        }
    }
}
