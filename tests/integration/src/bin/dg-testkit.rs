//! `dg-testkit`: the test kit's helpers for shell scripts (`contrib/dev/runtime.sh`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use driftguard_testkit::{images, Cri};

/// Test kit helpers for driftguard's private runtime.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the test images (pause, busybox, scenario) as OCI archives.
    BuildImages {
        /// The static busybox binary to put into the images.
        #[arg(long)]
        busybox: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Exit 0 when the CRI runtime at ENDPOINT reports RuntimeReady.
    CriReady {
        /// containerd's socket.
        #[arg(long)]
        endpoint: PathBuf,
    },
    /// Stop and remove every pod sandbox.
    CriRmAll {
        /// containerd's socket.
        #[arg(long)]
        endpoint: PathBuf,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::BuildImages { busybox, out } => {
            for (name, image) in images::build_all(&busybox, &out)? {
                println!("{name} {}", image.manifest_digest);
            }
        }
        Cmd::CriReady { endpoint } => {
            if !Cri::connect(&endpoint, &std::env::temp_dir())?.runtime_ready()? {
                bail!("runtime not ready");
            }
        }
        Cmd::CriRmAll { endpoint } => {
            let n = Cri::connect(&endpoint, &std::env::temp_dir())?.remove_all_pods()?;
            eprintln!("removed {n} pod sandboxes");
        }
    }
    Ok(())
}
