//! `driftguard`: binary drift detection and blocking for containerd nodes.
//!
//! This binary is thin: it parses the command line and hands each subcommand to the crate that
//! implements it. Every subcommand lives in its own module under `src/cli/`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_format);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("driftguard: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
