//! The native seccomp path end to end, as a containerd ≥ 2.3 (NRI v0.12) node would run it.
//!
//! 1. The plugin runs on one end of a socketpair; this test plays the runtime on the other:
//!    Configure as containerd v2.3.0 / NRI v0.12.0, then CreateContainer for a container whose
//!    reported `seccomp_policy` is containerd's RuntimeDefault profile (a capture of the
//!    section containerd writes into `config.json`, converted as NRI's `FromOCILinuxSeccomp`).
//! 2. The adjustment is applied as the runtime applies it (NRI `AdjustSeccompPolicy`: full
//!    replacement, no `defaultErrnoRet`) into a busybox bundle's `config.json`.
//! 3. runc 1.1.5 runs the bundle; a listener in this test receives the notify fd with the
//!    container's state, answers every exec notification with CONTINUE, and the container's
//!    output shows both execs ran.
//!
//! Needs root, runc (`contrib/dev/runtime.sh runc-path 1.1.5` or `DG_RUNC_PATH`) and a static
//! busybox (`contrib/dev/runtime.sh busybox-path` or `DG_BUSYBOX_PATH`). Missing prerequisites
//! fail the test.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use driftguard_nri::seccomp::{nri_from_oci, runtime_applied_oci};
use driftguard_nri::{FixedPolicy, NoHooks, Plugin, PluginConfig};
use driftguard_policy::Action;
use driftguard_proto::api::{self, PLUGIN_SERVICE};
use driftguard_proto::rpc::{serve, Handler};
use driftguard_proto::{Client, Mux, Status};
use driftguard_seccomp::handoff;
use prost::Message;
use tokio::net::UnixStream;

const RUNTIME_DEFAULT: &str =
    include_str!("../../seccomp-notify/tests/fixtures/containerd-runtime-default.json");
const CONTAINER_ID: &str = "dg-nri-native-1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(env: &str, args: &[&str]) -> Result<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Ok(PathBuf::from(path));
    }
    let out = Command::new(repo_root().join("contrib/dev/runtime.sh"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "runtime.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Accepts RegisterPlugin, as the runtime does.
struct Registrar;

#[async_trait::async_trait]
impl Handler for Registrar {
    async fn handle(&self, _s: &str, _m: &str, _p: bytes::Bytes) -> Result<Vec<u8>, Status> {
        Ok(api::Empty {}.encode_to_vec())
    }
}

/// Plays containerd 2.3 against the real plugin and returns the seccomp adjustment.
async fn adjustment_from_plugin(listener_path: &Path) -> Result<api::LinuxSeccomp> {
    let (ours, theirs) = UnixStream::pair()?;
    let config = PluginConfig {
        cluster: "lab".into(),
        listener_path: Some(listener_path.display().to_string()),
        ..Default::default()
    };
    let policy = Arc::new(FixedPolicy {
        rule: "default".into(),
        action: Action::Block,
    });
    let plugin = Arc::new(Plugin::new(config, policy, Arc::new(NoHooks)));
    let run = tokio::spawn({
        let plugin = plugin.clone();
        async move { plugin.run_on_stream(ours, "driftguard", "10").await }
    });
    let (_mux, mut conns) = Mux::spawn(theirs, &[1, 2]);
    tokio::spawn(serve(conns.pop().context("conn 2")?, Arc::new(Registrar)));
    let client = Client::new(conns.pop().context("conn 1")?);
    let t = Duration::from_secs(2);

    let configure = api::ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: "v2.3.0".into(),
        nri_version: "v0.12.0".into(),
        ..Default::default()
    };
    client
        .call(PLUGIN_SERVICE, "Configure", configure.encode_to_vec(), t)
        .await?;

    let reported =
        nri_from_oci(&serde_json::from_str(RUNTIME_DEFAULT)?).map_err(anyhow::Error::msg)?;
    let container = api::Container {
        id: CONTAINER_ID.into(),
        name: "app".into(),
        linux: Some(api::LinuxContainer {
            seccomp_policy: Some(reported),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = api::PodSandbox {
        name: "pod-1".into(),
        namespace: "tests".into(),
        ..Default::default()
    };
    let create = api::CreateContainerRequest {
        pod: Some(pod),
        container: Some(container),
    };
    let reply = client
        .call(PLUGIN_SERVICE, "CreateContainer", create.encode_to_vec(), t)
        .await?;
    let reply = api::CreateContainerResponse::decode(reply)?;
    plugin.cancel_token().cancel();
    run.await??;
    reply
        .adjust
        .and_then(|a| a.linux)
        .and_then(|l| l.seccomp_policy)
        .context("the plugin sent no seccomp adjustment")
}

fn write_bundle(dir: &Path, runc: &Path, busybox: &Path, seccomp: serde_json::Value) -> Result<()> {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for applet in ["sh", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let status = Command::new(runc).arg("spec").current_dir(dir).status()?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "/bin/echo exec-allowed"]);
    config["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    config["linux"]["seccomp"] = seccomp;
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// Answers every notification on `fd` with CONTINUE until all its users are gone.
fn serve_notifications(fd: OwnedFd, count: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let raw = fd.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        if pfd.revents & libc::POLLHUP != 0 {
            break;
        }
        if let Ok(notif) = driftguard_seccomp::sys::recv(fd.as_fd()) {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = driftguard_seccomp::sys::send_continue(fd.as_fd(), notif.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_policy_with_notify_reaches_the_listener_under_runc() -> Result<()> {
    let runc = tool("DG_RUNC_PATH", &["runc-path", "1.1.5"])?;
    let busybox = tool("DG_BUSYBOX_PATH", &["busybox-path"])?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("notify.sock");

    let policy = adjustment_from_plugin(&socket).await?;
    assert_eq!(policy.listener_metadata, CONTAINER_ID);
    let section = runtime_applied_oci(&policy);
    assert!(section.get("defaultErrnoRet").is_none());
    let bundle = dir.path().join("bundle");
    write_bundle(&bundle, &runc, &busybox, section)?;

    let listener = tokio::net::UnixListener::bind(&socket)?;
    let received = Arc::new(Mutex::new(None));
    let (count, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let accept = tokio::spawn({
        let (received, count, stop) = (received.clone(), count.clone(), stop.clone());
        async move {
            let (stream, _) = listener.accept().await?;
            let handoff = handoff::receive(&stream).await?;
            *received.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(handoff.state);
            tokio::task::spawn_blocking(move || {
                serve_notifications(handoff.notify_fd, count, stop)
            });
            anyhow::Ok(stream)
        }
    });

    let runc_root = dir.path().join("runc-root");
    let out = tokio::task::spawn_blocking({
        let (runc, runc_root, bundle) = (runc.clone(), runc_root.clone(), bundle.clone());
        move || {
            Command::new(&runc)
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(CONTAINER_ID)
                .stdin(std::process::Stdio::null())
                .output()
        }
    })
    .await??;
    stop.store(true, Ordering::Relaxed);
    let _ = Command::new(&runc)
        .arg("--root")
        .arg(&runc_root)
        .args(["delete", "--force", CONTAINER_ID])
        .output();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "exec-allowed");
    let _stream = tokio::time::timeout(Duration::from_secs(5), accept).await???;
    let state = received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone()
        .context("no hand-off")?;
    assert_eq!(state.fds, vec!["seccompFd"]);
    assert_eq!(state.metadata, CONTAINER_ID);
    assert_eq!(state.state.id, CONTAINER_ID);
    // runc init's exec of /bin/sh and sh's exec of /bin/echo.
    assert!(
        count.load(Ordering::Relaxed) >= 2,
        "notifications: {}",
        count.load(Ordering::Relaxed)
    );
    Ok(())
}
