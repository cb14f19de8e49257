//! A node protected by driftguard: a private containerd whose runc is the driftguard wrapper,
//! plus a running `driftguard daemon` (NRI plugin, supervisor, policy watcher, alert file).
//!
//! The node lives in its own runtime instance (`DG_NODE_DEV_DIR`, default
//! `$DG_DEV_ROOT/driftguard-dev-node` with `DG_DEV_ROOT` defaulting to `/var/lib`), apart from the plain instance that [`crate::Runtime::shared`]
//! gives, so tests can compare the same exec with and without driftguard. Everything the node
//! started (daemon, fd holder) is recorded in `owned.pids` below the instance, and
//! `contrib/dev/runtime.sh down` with the same `DG_DEV_DIR` stops it.
//!
//! Layout below `<instance>/node/`: `config.yaml`, `policy.yaml`, `events.jsonl`, `daemon.log`,
//! `state/`.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::runtime::{runtime_sh, Runtime};

/// A running protected node.
pub struct Node {
    /// The containerd runtime (its runc is the wrapper).
    pub runtime: Runtime,
    /// The `driftguard` binary.
    pub binary: PathBuf,
    /// Directory with the node's configuration, policy, events and logs.
    pub dir: PathBuf,
    /// The daemon's configuration file.
    pub config_path: PathBuf,
    /// The policy file the daemon watches.
    pub policy_path: PathBuf,
    /// The JSON lines alert file.
    pub events_path: PathBuf,
    /// The supervisor socket.
    pub supervisor_socket: PathBuf,
    dev_dir: String,
    daemon: Option<Child>,
}

impl Node {
    /// Brings up the node's containerd (wrapper as runc) and starts the daemon with `policy`.
    ///
    /// `binary` is the `driftguard` executable. The containerd and runc versions come from
    /// `DG_CONTAINERD` and `DG_RUNC` as for the plain runtime.
    pub fn start(binary: &Path, policy: &str) -> Result<Node> {
        let dev_dir = std::env::var("DG_NODE_DEV_DIR").unwrap_or_else(|_| {
            let root = std::env::var("DG_DEV_ROOT").unwrap_or_else(|_| "/var/lib".into());
            format!("{root}/driftguard-dev-node")
        });
        let ctd = std::env::var("DG_CONTAINERD").unwrap_or_else(|_| "2.1.9".into());
        let dir = Path::new(&dev_dir).join(format!("ctd-{ctd}/node"));
        fs::create_dir_all(dir.join("state"))?;
        let wrapper = dir.join("driftguard-runc");
        let _ = fs::remove_file(&wrapper);
        std::os::unix::fs::symlink(binary, &wrapper)?;

        let runc = runtime_sh(
            &[
                "runc-path",
                &std::env::var("DG_RUNC").unwrap_or("1.1.5".into()),
            ],
            &[],
        )?;
        let mut node = Node {
            runtime: Runtime::from_env_output(&runtime_sh(&["env"], &[("DG_DEV_DIR", &dev_dir)])?)?,
            binary: binary.to_path_buf(),
            config_path: dir.join("config.yaml"),
            policy_path: dir.join("policy.yaml"),
            events_path: dir.join("events.jsonl"),
            supervisor_socket: run_dir(&dev_dir, &ctd).join("supervisor.sock"),
            dir,
            dev_dir,
            daemon: None,
        };
        node.write_config(runc.trim())?;
        node.set_policy(policy)?;
        let _ = fs::remove_file(&node.events_path);

        let config = node.config_path.display().to_string();
        let env = [
            ("DG_DEV_DIR", node.dev_dir.as_str()),
            (
                "DG_RUNTIME_BINARY",
                wrapper.to_str().context("non-UTF-8 path")?,
            ),
            ("DRIFTGUARD_CONFIG", config.as_str()),
        ];
        node.runtime = Runtime::up(&env)?;
        node.start_daemon()?;
        Ok(node)
    }

    fn write_config(&self, runc: &str) -> Result<()> {
        let run = self
            .supervisor_socket
            .parent()
            .context("socket has no directory")?;
        let config = format!(
            "cluster: test-cluster\nnode: test-node\nstateDir: {state}\npolicyPath: {policy}\n\
             supervisorSocket: {sock}\nholderSocket: {run}/fd-holder.sock\nstartHolder: true\n\
             nri:\n  socket: {nri}\n  pluginIndex: \"10\"\nruncPath: {runc}\n\
             alerts:\n  stdout: false\n  file: {events}\nmetricsAddress: \"\"\n",
            state = self.dir.join("state").display(),
            policy = self.policy_path.display(),
            sock = self.supervisor_socket.display(),
            run = run.display(),
            nri = self.nri_socket().display(),
            events = self.events_path.display(),
        );
        let config = config.replace("runcPath: ", "runc:\n  path: ");
        fs::write(&self.config_path, config)?;
        Ok(())
    }

    fn nri_socket(&self) -> PathBuf {
        self.runtime.nri_socket.clone()
    }

    /// Replaces the policy file atomically (as an editor or a ConfigMap update would).
    pub fn set_policy(&self, yaml: &str) -> Result<()> {
        let tmp = self.policy_path.with_extension("yaml.tmp");
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, &self.policy_path)?;
        Ok(())
    }

    /// Starts `driftguard daemon` and waits until its supervisor socket and NRI plugin are up.
    pub fn start_daemon(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())?;
        // The log is appended to across starts: only what this daemon writes counts.
        let log_start = log.metadata()?.len();
        let child = Command::new(&self.binary)
            .args(["daemon", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting driftguard daemon")?;
        self.record_pid(child.id())?;
        self.daemon = Some(child);
        self.wait_ready(log_start, Duration::from_secs(30))?;
        let holder = fs::read_to_string(self.dir.join("state/fd-holder.pid")).unwrap_or_default();
        if let Ok(pid) = holder.trim().parse() {
            self.record_pid(pid)?;
        }
        Ok(())
    }

    fn record_pid(&self, pid: u32) -> Result<()> {
        let path = self
            .dir
            .parent()
            .context("node dir has no parent")?
            .join("owned.pids");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{pid}")?;
        Ok(())
    }

    fn wait_ready(&self, log_start: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let log = fs::read(self.daemon_log()).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
            let ready = log.rsplit("driftguard daemon running").next().unwrap_or("");
            if log.contains("driftguard daemon running") && ready.contains("synchronized") {
                return Ok(());
            }
            if let Some(pid) = self.daemon_pid() {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    bail!(
                        "driftguard daemon exited; see {}",
                        self.daemon_log().display()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "driftguard daemon not ready after {timeout:?}; see {}",
            self.daemon_log().display()
        )
    }

    /// The daemon's log file.
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Every alert written so far.
    pub fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.events_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Alerts of one container.
    pub fn events_of(&self, container_id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["container_id"] == container_id)
            .collect()
    }

    /// Waits for an alert of `container_id` whose path is `path`.
    pub fn wait_event(&self, container_id: &str, path: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .events_of(container_id)
                .into_iter()
                .find(|e| e["path"] == path)
            {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!(
                    "no alert for {path} in container {container_id} after {timeout:?}; alerts: {:?}",
                    self.events_of(container_id)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The node's socket directory: one per instance and containerd version, so nodes in different
/// instance directories never share sockets.
fn run_dir(dev_dir: &str, ctd: &str) -> PathBuf {
    let name: String = dev_dir
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    PathBuf::from(format!("/run/dg-{name}-{ctd}"))
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop_daemon();
    }
}
