//! The private containerd + runc runtime, as tests see it.
//!
//! [`Runtime::shared`] brings the runtime up once per test process through
//! `contrib/dev/runtime.sh up` (idempotent and file-locked, so parallel test binaries share one
//! containerd) and reads its paths from `runtime.sh env`. The containerd version comes from
//! `DG_CONTAINERD` (default 2.1.9) and the runc version from `DG_RUNC` (default 1.1.5).
//!
//! The runtime stays up after the tests: the test command (`contrib/test.sh`) stops it with
//! `runtime.sh down` when the run ends, whatever its result, and every pod a test creates is
//! removed by its guard even when the test fails.
//!
//! Tests need root. A test run without root, or a runtime that cannot come up, fails loudly;
//! nothing is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::cri::Cri;

/// Root of the repository (for `contrib/dev/runtime.sh`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Paths of a running private runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// containerd version (`2.1.9` or `1.7.24`).
    pub containerd_version: String,
    /// CRI (and containerd gRPC) socket.
    pub cri_socket: PathBuf,
    /// NRI socket.
    pub nri_socket: PathBuf,
    /// containerd root (images, snapshots).
    pub root: PathBuf,
    /// containerd state (bundles).
    pub state: PathBuf,
    /// containerd's log file.
    pub log: PathBuf,
    /// Directory of pre-registered NRI plugins.
    pub nri_plugin_dir: PathBuf,
    /// The runc binary in use.
    pub runc: PathBuf,
    /// runc's `--root` for this containerd.
    pub runc_root: PathBuf,
    /// The `ctr` command with address and namespace arguments.
    pub ctr: Vec<String>,
    /// Where pod logs go.
    pub pods_dir: PathBuf,
}

/// Runs `contrib/dev/runtime.sh ARGS` and returns its standard output.
pub fn runtime_sh(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let script = repo_root().join("contrib/dev/runtime.sh");
    let out = Command::new(&script)
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("runtime.sh {} failed with {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

impl Runtime {
    /// The runtime for this test process, brought up on first use.
    ///
    /// # Panics
    /// When not root or when the runtime cannot be brought up: a test that needs it cannot run.
    pub fn shared() -> &'static Runtime {
        static SHARED: OnceLock<Runtime> = OnceLock::new();
        SHARED.get_or_init(|| match Runtime::up(&[]) {
            Ok(rt) => rt,
            Err(err) => panic!("the private containerd runtime is not available: {err:#}"),
        })
    }

    /// Brings up (or reuses) a runtime with extra `runtime.sh` environment settings.
    pub fn up(env: &[(&str, &str)]) -> Result<Runtime> {
        if effective_uid() != 0 {
            bail!("integration tests need root (containerd, runc and overlay mounts)");
        }
        runtime_sh(&["up"], env)?;
        Runtime::from_env_output(&runtime_sh(&["env"], env)?)
    }

    /// Parses the `export` lines of `runtime.sh env`.
    pub fn from_env_output(text: &str) -> Result<Runtime> {
        let vars: HashMap<&str, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"').to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .with_context(|| format!("runtime.sh env: no {k}"))
        };
        Ok(Runtime {
            containerd_version: get("DG_CONTAINERD_VERSION")?,
            cri_socket: get("DG_CRI_ENDPOINT")?.into(),
            nri_socket: get("DG_NRI_SOCKET")?.into(),
            root: get("DG_CTD_ROOT")?.into(),
            state: get("DG_CTD_STATE")?.into(),
            log: get("DG_CTD_LOG")?.into(),
            nri_plugin_dir: get("DG_NRI_PLUGIN_DIR")?.into(),
            runc: get("DG_RUNC_BIN")?.into(),
            runc_root: get("DG_RUNC_ROOT")?.into(),
            ctr: get("DG_CTR")?
                .split_whitespace()
                .map(String::from)
                .collect(),
            pods_dir: get("DG_PODS_DIR")?.into(),
        })
    }

    /// A CRI client connected to this runtime.
    pub fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.cri_socket, &self.pods_dir)
    }

    /// The OCI bundle directory of a container (holds its `config.json`).
    pub fn bundle_dir(&self, container_id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(container_id)
    }

    /// The container's `config.json`, parsed.
    pub fn config_json(&self, container_id: &str) -> Result<serde_json::Value> {
        let path = self.bundle_dir(container_id).join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The overlay mount of a container's root filesystem, from the host's mountinfo.
    pub fn rootfs_mount(&self, container_id: &str) -> Result<OverlayMount> {
        let target = self.bundle_dir(container_id).join("rootfs");
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        overlay_mount_at(&info, &target)
            .with_context(|| format!("no overlay mount at {}", target.display()))
    }

    /// Runs `ctr ARGS` against this runtime.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.ctr[0])
            .args(&self.ctr[1..])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn effective_uid() -> u32 {
    // Reading /proc avoids an unsafe libc call: the effective uid is the second Uid field.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// An overlay mount's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower directories, top layer first (as `lowerdir=` lists them).
    pub lowerdirs: Vec<PathBuf>,
    /// The writable upper directory.
    pub upperdir: PathBuf,
}

/// Finds the overlay mounted at `target` in a mountinfo text and returns its layers.
pub fn overlay_mount_at(mountinfo: &str, target: &Path) -> Option<OverlayMount> {
    let target = target.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if left.split(' ').nth(4)? != target {
            return None;
        }
        let mut fields = right.split(' ');
        if fields.next()? != "overlay" {
            return None;
        }
        let options = fields.nth(1)?;
        let mut lowerdirs = Vec::new();
        let mut upperdir = None;
        for opt in options.split(',') {
            if let Some(v) = opt.strip_prefix("lowerdir=") {
                lowerdirs = v.split(':').map(PathBuf::from).collect();
            } else if let Some(v) = opt.strip_prefix("upperdir=") {
                upperdir = Some(PathBuf::from(v));
            }
        }
        Some(OverlayMount {
            lowerdirs,
            upperdir: upperdir?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_overlay_line() {
        let info = "1 2 0:1 / / rw - ext4 /dev/vda rw\n\
            99 1 0:55 / /s/k8s.io/c1/rootfs rw,relatime - overlay overlay \
            rw,lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs,upperdir=/r/snapshots/9/fs,\
            workdir=/r/snapshots/9/work\n";
        let m = overlay_mount_at(info, Path::new("/s/k8s.io/c1/rootfs")).unwrap();
        assert_eq!(
            m.lowerdirs,
            vec![
                PathBuf::from("/r/snapshots/3/fs"),
                "/r/snapshots/2/fs".into()
            ]
        );
        assert_eq!(m.upperdir, PathBuf::from("/r/snapshots/9/fs"));
        assert!(overlay_mount_at(info, Path::new("/elsewhere")).is_none());
    }
}
