//! Hot reload: a shared handle on the current policy and a watcher that swaps in new versions.
//!
//! [`PolicyStore`] is a cheap-clone handle; [`PolicyStore::current`] is a lock-free load of an
//! `Arc<Policy>`, so the supervisor's hot path never waits for a reload. [`PolicyWatcher`]
//! watches the policy file's parent directory (inotify through `notify`), which catches both
//! the Kubernetes ConfigMap pattern (the file is a symlink through `..data`, and an update
//! atomically replaces the `..data` symlink) and editors that write a new file and rename it
//! over the old one. After a burst of events settles (50 ms of quiet, or 250 ms at most while
//! other files in the directory keep changing) the file is read again through its symlinks;
//! if its content changed, it is parsed, and a valid version replaces the current one. An
//! invalid version is logged with file, line and column, counted, and ignored: the old policy
//! stays in force. A slow periodic check (every 5 s) covers events the kernel dropped.
//!
//! Limits: if the parent directory itself is deleted and recreated, inotify events stop and
//! only the periodic check notices the new file.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use crate::file::PolicyError;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// How long the watcher waits for a burst of file events to settle.
const SETTLE: Duration = Duration::from_millis(50);
/// The longest the watcher lets a stream of events postpone reading the file.
const MAX_SETTLE: Duration = Duration::from_millis(250);
/// How often the watcher re-reads the file when no event arrives.
const POLL: Duration = Duration::from_secs(5);

struct Inner {
    current: ArcSwap<Policy>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Shared handle on the policy in force (cheap to clone).
#[derive(Clone)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("policy", &self.current().name())
            .field("reloads_ok", &self.reloads_ok())
            .field("reloads_failed", &self.reloads_failed())
            .finish()
    }
}

impl PolicyStore {
    /// A store holding `policy`.
    pub fn new(policy: Policy) -> PolicyStore {
        PolicyStore {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(policy),
                reloads_ok: AtomicU64::new(0),
                reloads_failed: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.inner.current.load_full()
    }

    /// Replaces the policy in force.
    pub fn replace(&self, policy: Policy) {
        self.inner.current.store(Arc::new(policy));
    }

    /// Successful reloads since the store was created.
    pub fn reloads_ok(&self) -> u64 {
        self.inner.reloads_ok.load(Ordering::Relaxed)
    }

    /// Rejected reloads since the store was created.
    pub fn reloads_failed(&self) -> u64 {
        self.inner.reloads_failed.load(Ordering::Relaxed)
    }

    /// The message of the last rejected reload, cleared by the next successful one.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// Parses `src` (read from `origin`) and, if valid, makes it the policy in force;
    /// otherwise keeps the current policy. Counts the attempt either way.
    pub fn reload_from_str(
        &self,
        src: &str,
        origin: &str,
        metrics: Option<&Metrics>,
    ) -> Result<(), PolicyError> {
        let result = Policy::from_yaml(src, origin);
        let ok = result.is_ok();
        if let Some(m) = metrics {
            m.policy_reload(ok);
        }
        let message = match result {
            Ok(policy) => {
                let rules = policy.rules().len();
                self.replace(policy);
                self.inner.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = origin, rules, "policy reloaded");
                None
            }
            Err(error) => {
                self.count_failure(origin, &error);
                Some(error)
            }
        };
        if let Ok(mut last) = self.inner.last_error.lock() {
            *last = message.as_ref().map(ToString::to_string);
        }
        message.map_or(Ok(()), Err)
    }

    /// Records a policy file that could not be used at all (unreadable, not text): counted and
    /// logged like a rejected document; the policy in force stays.
    pub fn reject(&self, error: PolicyError, metrics: Option<&Metrics>) {
        if let Some(m) = metrics {
            m.policy_reload(false);
        }
        let origin = match &error {
            PolicyError::Read { path, .. } => path.display().to_string(),
            PolicyError::Invalid { origin, .. } => origin.clone(),
        };
        self.count_failure(&origin, &error);
        if let Ok(mut last) = self.inner.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    fn count_failure(&self, origin: &str, error: &PolicyError) {
        self.inner.reloads_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = origin, %error, "policy rejected, keeping the previous one");
    }
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The policy path has no parent directory to watch.
    #[error("{}: policy path has no parent directory", path.display())]
    NoParent {
        /// The policy path.
        path: PathBuf,
    },
    /// inotify could not be set up.
    #[error("{}: cannot watch policy directory: {source}", path.display())]
    Notify {
        /// The watched directory.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The watcher thread could not be spawned.
    #[error("cannot spawn policy watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Watches a policy file and reloads it into a [`PolicyStore`]; stops when dropped.
pub struct PolicyWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    stop: Option<mpsc::Sender<Wake>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher").finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Starts watching `path`. The store is expected to hold the policy currently in the file
    /// (the file's present content is taken as already applied).
    pub fn start(
        path: &Path,
        store: PolicyStore,
        metrics: Option<Metrics>,
    ) -> Result<PolicyWatcher, WatchError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            Some(_) => PathBuf::from("."),
            None => return Err(WatchError::NoParent { path: path.into() }),
        };
        let (tx, rx) = mpsc::channel::<Wake>();
        let stop = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(Wake::Event);
            }
        })
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        let mut state = WatchState {
            path: path.to_path_buf(),
            last: fingerprint(path),
            store,
            metrics,
            missing: false,
            reported: None,
        };
        let thread = std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || state.run(&rx))
            .map_err(WatchError::Thread)?;
        tracing::info!(path = %path.display(), dir = %dir.display(), "watching policy");
        Ok(PolicyWatcher {
            watcher: Some(watcher),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        drop(self.watcher.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Wake::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What wakes the watcher thread.
pub(crate) enum Wake {
    Event,
    Stop,
}

struct WatchState {
    path: PathBuf,
    last: Option<u64>,
    store: PolicyStore,
    metrics: Option<Metrics>,
    /// The file was missing at the last check (an unlink and a rename leave a short gap, so a
    /// missing file is reported only when it is still missing at the next check).
    missing: bool,
    /// The read error reported last, so a persistent one is reported once.
    reported: Option<String>,
}

impl WatchState {
    fn run(&mut self, rx: &mpsc::Receiver<Wake>) {
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Wake::Event) => {
                    // Let the burst of a rename or symlink swap settle, then read once. Other
                    // files written steadily in the same directory must not postpone the read
                    // forever, so the settling ends after MAX_SETTLE whatever happens.
                    let settled_by = Instant::now() + MAX_SETTLE;
                    loop {
                        let wait = SETTLE.min(settled_by.saturating_duration_since(Instant::now()));
                        if wait.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(wait) {
                            Ok(Wake::Event) => continue,
                            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.check();
        }
    }

    fn check(&mut self) {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => return self.unreadable(error),
        };
        self.missing = false;
        self.reported = None;
        let print = hash_bytes(&bytes);
        if self.last == Some(print) {
            return;
        }
        self.last = Some(print);
        let origin = self.path.display().to_string();
        match String::from_utf8(bytes) {
            Ok(src) => {
                let _ = self
                    .store
                    .reload_from_str(&src, &origin, self.metrics.as_ref());
            }
            Err(err) => {
                let error = PolicyError::Read {
                    path: self.path.clone(),
                    source: crate::file::not_utf8(&err),
                };
                self.store.reject(error, self.metrics.as_ref());
            }
        }
    }

    fn unreadable(&mut self, error: std::io::Error) {
        if error.kind() == std::io::ErrorKind::NotFound && !self.missing {
            self.missing = true;
            tracing::debug!(path = %self.path.display(), %error, "policy file not readable");
            return;
        }
        let text = error.to_string();
        if self.reported.as_deref() == Some(text.as_str()) {
            return;
        }
        self.reported = Some(text);
        // Whatever comes back later is read again, even the same text.
        self.last = None;
        let error = PolicyError::Read {
            path: self.path.clone(),
            source: error,
        };
        self.store.reject(error, self.metrics.as_ref());
    }
}

fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|b| hash_bytes(&b))
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}
