//! What the supervisor knows about one container: identity, layers, image, verdict cache.
//!
//! A record is built from the first hand-off of a container (its init, or a `runc exec` after a
//! supervisor restart) and shared by every notify fd of that container. The image view is
//! requested in the background when the record is built; an exec that needs it (a file outside
//! the image layers) waits for it within the decision timeout.
//!
//! Limits: the rootfs is looked up once; a container whose rootfs is remounted later keeps the
//! old layers.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driftguard_policy::{Outcome, Scope};
use rustix::fs::{Mode, OFlags};
use tokio::sync::watch;

use crate::classify::{ImageLookup, VerdictCache};
use crate::decide::{ExecEvent, ImageSource};
use crate::handoff::ProcessState;
use crate::mountinfo::{self, OverlayLayers};

type ImageSlot = Option<Result<Arc<dyn ImageLookup>, String>>;

/// One monitored container.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Who it is, for policy.
    pub scope: Scope,
    /// Whether driftguard's own annotations were present (the NRI plugin saw it).
    pub annotated: bool,
    /// Its overlay layers, when its rootfs is an overlay.
    pub layers: Option<OverlayLayers>,
    /// Verdicts by file identity.
    pub cache: VerdictCache,
    /// Whether the overlay's upper layer is on a filesystem that stamps writes through shared
    /// mappings ([`crate::classify::is_timestamped_fs`]): only then may content verdicts of its
    /// files be cached by identity.
    pub upper_timestamped: bool,
    /// The overlay's upper layer directory (`O_PATH`), opened once: upper files are looked up
    /// below it on the exec path.
    pub upper_dir: Option<OwnedFd>,
    image: watch::Receiver<ImageSlot>,
    decision_timeout: Duration,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("layers", &self.layers)
            .finish()
    }
}

impl Container {
    /// Builds the record of a hand-off and starts fetching the image in the background.
    pub fn from_state(
        state: &ProcessState,
        mountinfo: &str,
        images: Arc<dyn ImageSource>,
    ) -> Container {
        let (scope, annotated) = Scope::from_annotations(&state.state.annotations);
        let rootfs = rootfs_path(&state.state.bundle);
        let layers = mountinfo::overlay_at(mountinfo, &rootfs);
        let (tx, rx) = watch::channel(None);
        match &layers {
            Some(layers) if !layers.lowerdirs.is_empty() => {
                let lowerdirs = layers.lowerdirs.clone();
                tokio::spawn(async move {
                    let result = images.image(lowerdirs).await;
                    let _ = tx.send(Some(result));
                });
            }
            _ => {
                let _ = tx.send(Some(Err(format!(
                    "no overlay rootfs at {}",
                    rootfs.display()
                ))));
            }
        }
        let upper_dir = layers
            .as_ref()
            .and_then(|l| l.upperdir.as_ref())
            .and_then(|upper| {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                rustix::fs::open(upper, flags, Mode::empty()).ok()
            });
        let upper_timestamped = upper_dir
            .as_ref()
            .and_then(|dir| rustix::fs::fstatfs(dir).ok())
            .is_some_and(|fs| crate::classify::is_timestamped_fs(fs.f_type));
        Container {
            id: state.state.id.clone(),
            scope,
            annotated,
            upper_timestamped,
            upper_dir,
            layers,
            cache: VerdictCache::default(),
            image: rx,
            decision_timeout: crate::classify::DEFAULT_HASH_TIME,
        }
    }

    /// Sets the supervisor's decision timeout, which also bounds hashing an exec target.
    pub fn with_decision_timeout(mut self, timeout: Duration) -> Container {
        self.decision_timeout = timeout;
        self
    }

    /// The decision timeout this container's execs are decided within.
    pub fn decision_timeout(&self) -> Duration {
        self.decision_timeout
    }

    /// An event about process `pid` of this container executing `path`: identity, parent and
    /// path set; no class, rule or argv yet, outcome deny until the caller says otherwise.
    pub fn event(&self, pid: u32, path: &str) -> ExecEvent {
        let scope = &self.scope;
        ExecEvent {
            container_id: self.id.clone(),
            namespace: scope.namespace.clone(),
            pod: scope.pod_name.clone(),
            container: scope.container_name.clone(),
            image: scope.image_name.clone(),
            pid,
            path: path.to_string(),
            argv: Vec::new(),
            class: None,
            hash: None,
            rule: String::new(),
            action: None,
            outcome: Outcome::Deny,
            allow_listed: false,
            error: None,
            parent: crate::supervisor::parent_of(pid),
            exec_gate: false,
        }
    }

    /// The container's image view, waiting for it if it is still being built.
    pub async fn image(&self) -> Result<Arc<dyn ImageLookup>, String> {
        let mut rx = self.image.clone();
        let slot = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "image lookup abandoned".to_string())?;
        slot.clone()
            .unwrap_or_else(|| Err("image lookup abandoned".into()))
    }
}

/// `<bundle>/<root.path>` from the bundle's config.json, or `<bundle>/rootfs`.
fn rootfs_path(bundle: &Path) -> PathBuf {
    let configured = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|config| config["root"]["path"].as_str().map(PathBuf::from));
    let root = configured.unwrap_or_else(|| PathBuf::from("rootfs"));
    let joined = bundle.join(root);
    std::fs::canonicalize(&joined).unwrap_or(joined)
}
