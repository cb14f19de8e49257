//! `dg-testkit`: the test kit's helpers for shell scripts (`contrib/dev/runtime.sh`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use driftguard_testkit::{images, ContainerSpec, Cri, PodSpec};

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
    /// Run a pod with one container and leave it running; prints the container id.
    RunPod {
        /// containerd's socket.
        #[arg(long)]
        endpoint: PathBuf,
        /// Where pod logs go.
        #[arg(long, default_value = "/tmp")]
        pods_dir: PathBuf,
        /// Pod name prefix.
        #[arg(long)]
        name: String,
        /// Namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Image.
        #[arg(long)]
        image: String,
        /// The container's command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command in a running container (CRI ExecSync); exits with its exit code.
    Exec {
        /// containerd's socket.
        #[arg(long)]
        endpoint: PathBuf,
        /// Container id.
        #[arg(long)]
        container: String,
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
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
        Cmd::RunPod {
            endpoint,
            pods_dir,
            name,
            namespace,
            image,
            command,
        } => {
            let cri = Cri::connect(&endpoint, &pods_dir)?;
            let pod = cri.run_pod(&PodSpec::new(&name, &namespace))?;
            let spec = ContainerSpec {
                name: name.clone(),
                image,
                command,
                ..Default::default()
            };
            let ctr = pod.start_container(&spec)?;
            println!("{}", ctr.id());
            // The pod outlives this process; `cri-rm-all` or `runtime.sh down` removes it.
            std::mem::forget(ctr);
            std::mem::forget(pod);
        }
        Cmd::Exec {
            endpoint,
            container,
            command,
        } => {
            let cri = Cri::connect(&endpoint, &std::env::temp_dir())?;
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = cri.exec_sync(&container, &args, std::time::Duration::from_secs(60))?;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            std::process::exit(out.exit_code);
        }
    }
    Ok(())
}
