//! Shared fixtures of the privileged supervisor tests: a busybox image layer, OCI bundles whose
//! rootfs is a real overlay mount (lowerdir = the layer, an upperdir), runc, and a supervisor
//! wired to the project's policy store and image index.
//!
//! Needs root, runc (`contrib/dev/runtime.sh runc-path VERSION`, or `DG_RUNC_PATH`), a static
//! busybox (`runtime.sh busybox-path`, or `DG_BUSYBOX`) and `gcc -static`. A missing
//! prerequisite fails the test: CI runs as root with all of them.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use driftguard_image_index::IndexCache;
use driftguard_policy::{Policy, PolicyStore};
use driftguard_seccomp::oci::{merge_into_config, ListenerTarget};
use driftguard_seccomp::{ExecEvent, Supervisor, SupervisorConfig};
use tokio::sync::mpsc;

/// Policy of the tests: drift is blocked, image files run.
pub const BLOCK_POLICY: &str = "apiVersion: driftguard.dev/v1
kind: DriftPolicy
spec:
  defaultRule:
    name: block-drift
    action: block
";

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runtime_sh(args: &[&str]) -> Result<PathBuf> {
    let out = Command::new(project_root().join("contrib/dev/runtime.sh"))
        .args(args)
        .output()
        .context("running contrib/dev/runtime.sh")?;
    if !out.status.success() {
        bail!(
            "runtime.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// runc of a version: `DG_RUNC_PATH` or the harness's unpacked copy.
pub fn runc(version: &str) -> Result<PathBuf> {
    match std::env::var_os("DG_RUNC_PATH") {
        Some(path) if version == "1.1.5" => Ok(PathBuf::from(path)),
        _ => runtime_sh(&["runc-path", version]),
    }
}

fn busybox() -> Result<PathBuf> {
    match std::env::var_os("DG_BUSYBOX") {
        Some(path) => Ok(PathBuf::from(path)),
        None => runtime_sh(&["busybox-path"]),
    }
}

/// The busybox image layer, built once per test process.
pub fn layer() -> Result<&'static Path> {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(dir) = LAYER.get() {
        return Ok(dir);
    }
    // Tests of one process ask for the layer at the same time: one builds it, the others wait.
    let _building = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(dir) = LAYER.get() {
        return Ok(dir);
    }
    // One layer per test process, named by its pid; layers of processes that are gone are
    // removed first, so repeated runs do not fill the temporary directory.
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("dg-layer-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = tmp.join(format!("dg-layer-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir(&dir)?;
    for sub in ["bin", "tmp", "proc", "dev", "sys", "etc", "root", "usr/bin"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(busybox()?, dir.join("bin/busybox"))?;
    for applet in [
        "sh", "ls", "cat", "cp", "chmod", "true", "echo", "sleep", "ln", "mkdir", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/xat.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("bin/xat"))
        .arg(&src)
        .status()
        .context("gcc -static")?;
    if !status.success() {
        bail!("gcc -static failed for {}", src.display());
    }
    let tiny = dir.join("tiny.c");
    std::fs::write(&tiny, "int main(void) { return 0; }\n")?;
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("bin/tiny"))
        .arg(&tiny)
        .status()?;
    std::fs::remove_file(&tiny)?;
    if !status.success() {
        bail!("gcc -static failed for the tiny program");
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    dynamic_files(&dir)?;
    Ok(LAYER.get_or_init(|| dir))
}

/// A script with a `#!` interpreter and the host's dynamic `true` with its loader and libc (at
/// the host's paths), so interpreter swaps can be tried.
fn dynamic_files(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("opt/scenario"))?;
    let script = dir.join("opt/scenario/hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello-from-script\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let relative = dir.join("opt/scenario/relative.sh");
    std::fs::write(&relative, "#! bin/sh\necho relative-from-script\n")?;
    std::fs::set_permissions(&relative, std::fs::Permissions::from_mode(0o755))?;
    // nest1 .. nest5: each names the next as its interpreter, nest5 names /bin/sh.
    for level in 1..=5 {
        let next = match level {
            5 => "/bin/sh".to_string(),
            _ => format!("/opt/scenario/nest{}", level + 1),
        };
        let script = dir.join(format!("opt/scenario/nest{level}"));
        std::fs::write(&script, format!("#!{next}\necho nested-{level}\n"))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    for (from, to) in [
        ("/usr/bin/true", "usr/bin/gnu-true"),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        let to = dir.join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &to).with_context(|| format!("copying {from}"))?;
    }
    Ok(())
}

/// An OCI bundle with an overlay rootfs over the busybox layer.
pub struct Bundle {
    pub dir: PathBuf,
    pub id: String,
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    mounted: bool,
}

impl Bundle {
    /// Creates the bundle; `args` is the container's command; the profile is containerd's
    /// RuntimeDefault merged with the notify rules pointing at `socket`.
    pub fn new(runc: &Path, socket: &Path, args: &[&str]) -> Result<Bundle> {
        Bundle::create(runc, Some(socket), args)
    }

    /// A bundle without any seccomp filter (the baseline of the benchmark).
    pub fn unfiltered(runc: &Path, args: &[&str]) -> Result<Bundle> {
        Bundle::create(runc, None, args)
    }

    fn create(runc: &Path, socket: Option<&Path>, args: &[&str]) -> Result<Bundle> {
        let dir = tempfile::Builder::new()
            .prefix("dg-bundle-")
            .tempdir()?
            .keep();
        let id = format!(
            "dg-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        for sub in ["upper", "work", "rootfs", "runc-root"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let lower = layer()?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(dir.join("rootfs"))
            .status()?;
        if !status.success() {
            bail!("mounting the overlay at {}", dir.join("rootfs").display());
        }
        let mut bundle = Bundle {
            runc_root: dir.join("runc-root"),
            dir,
            id,
            runc: runc.to_path_buf(),
            mounted: true,
        };
        bundle.write_config(socket, args)?;
        Ok(bundle)
    }

    fn write_config(&mut self, socket: Option<&Path>, args: &[&str]) -> Result<()> {
        let status = Command::new(&self.runc)
            .arg("spec")
            .current_dir(&self.dir)
            .status()?;
        if !status.success() {
            bail!("runc spec failed");
        }
        let path = self.dir.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(args);
        config["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        config["hostname"] = "dg".into();
        config["mounts"]
            .as_array_mut()
            .context("mounts")?
            .push(serde_json::json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=64m"]
            }));
        let profile = include_str!("../fixtures/containerd-runtime-default.json");
        config["linux"]["seccomp"] = serde_json::from_str(profile)?;
        config["annotations"] = serde_json::json!({
            "io.kubernetes.cri.sandbox-namespace": "tests",
            "io.kubernetes.cri.sandbox-name": "pod-1",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "localhost/driftguard/busybox:1"
        });
        match socket {
            Some(socket) => {
                let target = ListenerTarget {
                    listener_path: socket.display().to_string(),
                    listener_metadata: self.id.clone(),
                };
                merge_into_config(&mut config, &target)?;
            }
            None => {
                if let Some(linux) = config["linux"].as_object_mut() {
                    linux.remove("seccomp");
                }
            }
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    fn runc_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(&self.runc_root);
        cmd
    }

    /// `runc run` in the foreground; returns the container's output.
    pub fn run(&self) -> Result<Output> {
        let out = self
            .runc_cmd()
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()?;
        Ok(out)
    }

    /// `runc run --detach`.
    pub fn start_detached(&self) -> Result<()> {
        let status = self
            .runc_cmd()
            .args(["run", "--detach", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("runc run --detach {} failed", self.id);
        }
        Ok(())
    }

    /// `runc exec ID ARGS...`.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        Ok(self
            .runc_cmd()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Host pid of the container's init (`runc state`).
    pub fn init_pid(&self) -> Result<u32> {
        let out = self.runc_cmd().arg("state").arg(&self.id).output()?;
        let state: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("runc state {}", self.id))?;
        state["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .context("no pid in runc state")
    }

    /// Writes a file into the container's upper layer through the overlay (as the container
    /// would).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self
            .runc_cmd()
            .args(["delete", "--force"])
            .arg(&self.id)
            .output();
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.join("rootfs")).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A supervisor running in this process on a private socket.
pub struct Running {
    pub socket: PathBuf,
    pub events: mpsc::UnboundedReceiver<ExecEvent>,
    pub stats: Arc<driftguard_seccomp::stats::DecisionStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// A supervisor with the default configuration; `DG_EXEC_GATE=1|0` turns the exec gate on
    /// or off (the benchmark compares both).
    pub async fn start(holder: Option<PathBuf>) -> Result<Running> {
        let default = SupervisorConfig::new(PathBuf::new(), None).exec_gate;
        let gate = match std::env::var("DG_EXEC_GATE").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => default,
        };
        Running::start_with(holder, gate).await
    }

    /// A supervisor with the exec gate on or off.
    pub async fn start_with(holder: Option<PathBuf>, exec_gate: bool) -> Result<Running> {
        Running::start_configured(holder, BLOCK_POLICY, |config| config.exec_gate = exec_gate).await
    }

    /// A supervisor with a policy of its own and a configuration adjusted by `configure`.
    pub async fn start_configured(
        holder: Option<PathBuf>,
        policy: &str,
        configure: impl FnOnce(&mut SupervisorConfig),
    ) -> Result<Running> {
        let dir = tempfile::Builder::new().prefix("dg-sup-").tempdir()?;
        let socket = dir.path().join("run/supervisor.sock");
        let policy = Policy::from_yaml(policy, "test-policy")?;
        let store = PolicyStore::new(policy);
        let index = IndexCache::new(dir.path().join("index"));
        let (tx, events) = mpsc::unbounded_channel();
        let mut config = SupervisorConfig::new(socket.clone(), holder);
        configure(&mut config);
        let supervisor = Supervisor::new(config, Arc::new(store), Arc::new(index), Arc::new(tx));
        let stats = supervisor.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = supervisor
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Running {
            socket,
            events,
            stats,
            stop: Some(stop),
            _dir: dir,
        })
    }

    pub fn drain_events(&mut self) -> Vec<ExecEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// stdout + stderr as one string.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `bundle` under runc to the end, off the async runtime, removes it, and returns the
/// container's stdout + stderr.
pub async fn run_to_end(bundle: Bundle) -> String {
    let out = blocking(move || {
        let out = bundle.run();
        drop(bundle);
        out
    })
    .await
    .expect("runc run");
    text(&out)
}

/// Whether `events` hold a denied exec of `path` with verdict class `class`.
pub fn denied(events: &[ExecEvent], path: &str, class: driftguard_policy::VerdictClass) -> bool {
    events.iter().any(|e| {
        e.path == path && e.class == Some(class) && e.outcome == driftguard_policy::Outcome::Deny
    })
}

/// Asserts that the container printed `line` (trimmed) as a line of its own.
pub fn expect_line(output: &str, line: &str) {
    assert!(
        output.lines().any(|l| l.trim() == line),
        "missing `{line}` in container output:\n{output}"
    );
}

/// Runs blocking work (runc) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// One count (`image`, `drift`, `denied`, `other`, `rc127`) of what `xat swap` printed for
/// `mode`.
pub fn swap_field(output: &str, mode: &str, name: &str) -> usize {
    let prefix = format!("swap {mode} ");
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no result for swap {mode}:\n{output}"));
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in `{line}`"))
}

/// The counts one `xat swap` printed for `mode`: (image ran, drift ran, denied, other errno).
pub fn swap_counts(output: &str, mode: &str) -> (usize, usize, usize, usize) {
    let field = |name| swap_field(output, mode, name);
    (
        field("image"),
        field("drift"),
        field("denied"),
        field("other"),
    )
}

/// Lets the bundle's container chroot: `CAP_SYS_CHROOT` and the `chroot` syscall (containerd's
/// profile allows it whenever the capability is granted). Returns the edited config for more
/// changes; the caller writes it with [`write_config`].
pub fn allow_chroot(bundle: &Bundle) -> Result<serde_json::Value> {
    grant(bundle, "CAP_SYS_CHROOT", "chroot")
}

/// Gives the bundle's container a capability and lets it make one syscall; returns the edited
/// config (see [`allow_chroot`]).
pub fn grant(bundle: &Bundle, capability: &str, syscall: &str) -> Result<serde_json::Value> {
    let path = bundle.dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let caps = config["process"]["capabilities"]
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("no capabilities in {}", path.display()))?;
    for set in caps.values_mut() {
        if let Some(list) = set.as_array_mut() {
            list.push(capability.into());
        }
    }
    config["linux"]["seccomp"]["syscalls"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no seccomp syscalls in {}", path.display()))?
        .push(serde_json::json!({"names": [syscall], "action": "SCMP_ACT_ALLOW"}));
    Ok(config)
}

/// Writes a bundle's `config.json`.
pub fn write_config(bundle: &Bundle, config: &serde_json::Value) -> Result<()> {
    let path = bundle.dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config)?)?;
    Ok(())
}
