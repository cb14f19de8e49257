//! The supervisor: accept hand-offs, serve every notify fd, answer every exec.
//!
//! Each notify fd gets its own task that waits on it (tokio `AsyncFd`), receives notifications
//! and spawns one task per notification, so one slow decision (hashing a large file, waiting
//! for an image index) never holds up another exec, in that container or any other. An fd is
//! closed when the kernel reports `POLLHUP` (no task uses the filter any more).
//!
//! Every fd is first given to the fd holder (when configured): if the supervisor dies, the
//! holder's duplicate keeps the filter's listener alive, execs wait instead of failing with
//! `ENOSYS`, and the next supervisor takes the fds back at start.
//!
//! Invariants: every notification gets exactly one answer attempt; an internal error or a
//! timeout is answered by the policy's failure policy (deny with `EPERM` by default); a
//! denied exec and an alert produce one [`ExecEvent`].
//!
//! Limits: decisions are bounded by `decision_timeout`; a caller stopped in the middle of its
//! exec (SIGSTOP) keeps its notification pending, which costs nothing but memory.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use driftguard_policy::{FailurePolicy, Outcome};
use futures::FutureExt;
use rustix::event::{PollFd, PollFlags};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::container::Container;
use crate::decide::{Decider, EventSink, ExecEvent, ExecFacts, ImageSource};
use crate::exec::{self, Assessment};
use crate::handoff::{self, ProcessState};
use crate::holder;
use crate::stats::DecisionStats;
use crate::sys::{self, Notification};

/// Where and how the supervisor runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The hand-off socket (`listenerPath` of the merged profiles). Its directory is created
    /// root-only (0700) and the socket is 0600.
    pub socket_path: PathBuf,
    /// The fd holder's socket, when one runs.
    pub holder_socket: Option<PathBuf>,
    /// Longest time one decision may take before the failure policy answers.
    pub decision_timeout: Duration,
    /// The mount table to find container rootfs overlays in.
    pub mountinfo_path: PathBuf,
}

impl SupervisorConfig {
    /// A configuration with the defaults: 2 s decisions, `/proc/self/mountinfo`.
    pub fn new(socket_path: PathBuf, holder_socket: Option<PathBuf>) -> SupervisorConfig {
        SupervisorConfig {
            socket_path,
            holder_socket,
            decision_timeout: Duration::from_secs(2),
            mountinfo_path: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The kernel lacks seccomp user notification or its layout is unknown.
    #[error("seccomp user notification unavailable: {0}")]
    Kernel(std::io::Error),
    /// The hand-off socket could not be set up.
    #[error("hand-off socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

struct Shared {
    config: SupervisorConfig,
    decider: Arc<dyn Decider>,
    images: Arc<dyn ImageSource>,
    sink: Arc<dyn EventSink>,
    containers: Mutex<HashMap<String, Weak<Container>>>,
    stats: Arc<DecisionStats>,
}

/// The exec supervisor.
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl Supervisor {
    /// Creates a supervisor; nothing is opened until [`Supervisor::run`].
    pub fn new(
        config: SupervisorConfig,
        decider: Arc<dyn Decider>,
        images: Arc<dyn ImageSource>,
        sink: Arc<dyn EventSink>,
    ) -> Supervisor {
        let shared = Shared {
            config,
            decider,
            images,
            sink,
            containers: Mutex::new(HashMap::new()),
            stats: Arc::new(DecisionStats::default()),
        };
        Supervisor {
            shared: Arc::new(shared),
        }
    }

    /// Decision-time statistics, live.
    pub fn stats(&self) -> Arc<DecisionStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes: takes back the holder's fds, then accepts hand-offs.
    /// The socket file is removed on the way out.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SupervisorError> {
        sys::check_notif_sizes().map_err(SupervisorError::Kernel)?;
        let listener = bind(&self.shared.config.socket_path)?;
        if let Some(holder_socket) = self.shared.config.holder_socket.clone() {
            self.shared.clone().recover(holder_socket).await;
        }
        info!(socket = %self.shared.config.socket_path.display(), "supervisor listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = self.shared.clone();
                        tokio::spawn(async move { shared.accept(stream).await });
                    }
                    Err(err) => warn!(error = %err, "accepting a hand-off failed"),
                },
            }
        }
        let _ = std::fs::remove_file(&self.shared.config.socket_path);
        info!("supervisor stopped");
        Ok(())
    }
}

fn bind(path: &Path) -> Result<UnixListener, SupervisorError> {
    let fail = |source| SupervisorError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(fail(err)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

impl Shared {
    async fn accept(self: Arc<Self>, stream: tokio::net::UnixStream) {
        let handoff = match handoff::receive(&stream).await {
            Ok(handoff) => handoff,
            // A connection closed before any byte is a liveness probe (the runc wrapper checks
            // the socket before it injects the filter), not a failed hand-off.
            Err(handoff::HandoffError::Incomplete(0)) => return,
            Err(err) => {
                warn!(error = %err, "hand-off refused");
                return;
            }
        };
        drop(stream);
        if let Some(holder_socket) = self.config.holder_socket.clone() {
            let raw = handoff.raw.clone();
            let dup = handoff.notify_fd.try_clone();
            let kept = match dup {
                Ok(dup) => {
                    tokio::task::spawn_blocking(move || holder::put(&holder_socket, &raw, dup))
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r)
                }
                Err(err) => Err(err),
            };
            if let Err(err) = kept {
                warn!(container_id = %handoff.state.state.id, error = %err,
                      "fd holder did not take the notify fd; a supervisor restart would break this container's execs");
            }
        }
        self.serve(handoff.state, handoff.notify_fd);
    }

    async fn recover(self: Arc<Self>, holder_socket: PathBuf) {
        let listed = tokio::task::spawn_blocking(move || holder::list(&holder_socket)).await;
        let entries = match listed {
            Ok(Ok(entries)) => entries,
            Ok(Err(err)) => {
                warn!(error = %err, "fd holder unavailable; no notify fds taken back");
                return;
            }
            Err(err) => {
                warn!(error = %err, "fd holder query failed");
                return;
            }
        };
        info!(
            count = entries.len(),
            "notify fds taken back from the fd holder"
        );
        let mut init_pids = Vec::new();
        for (raw, fd) in entries {
            match serde_json::from_slice::<ProcessState>(&raw) {
                Ok(state) => {
                    init_pids.extend(i32::try_from(state.state.pid).ok());
                    self.clone().serve(state, fd);
                }
                Err(err) => warn!(error = %err, "fd holder returned an unreadable state"),
            }
        }
        // Execs the previous supervisor received but never answered wait forever unless
        // restarted; the fds are being served now, so the restarted execs will be answered.
        init_pids.sort_unstable();
        init_pids.dedup();
        let _ = tokio::task::spawn_blocking(move || {
            for pid in init_pids {
                crate::recover::kick_waiting_execs(pid);
            }
        })
        .await;
    }

    fn container(&self, state: &ProcessState) -> Arc<Container> {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = containers.get(&state.state.id).and_then(Weak::upgrade) {
            return existing;
        }
        let mountinfo = std::fs::read_to_string(&self.config.mountinfo_path).unwrap_or_default();
        let container = Arc::new(Container::from_state(
            state,
            &mountinfo,
            self.images.clone(),
        ));
        if container.layers.is_none() {
            warn!(container_id = %state.state.id, bundle = %state.state.bundle.display(),
                  "container rootfs is not an overlay; every exec is classified by content");
        }
        containers.insert(state.state.id.clone(), Arc::downgrade(&container));
        container
    }

    fn serve(self: Arc<Self>, state: ProcessState, fd: OwnedFd) {
        let container = self.container(&state);
        info!(container_id = %container.id, pid = state.pid, status = %state.state.status,
              "serving notify fd");
        tokio::spawn(async move {
            if let Err(err) = self.serve_fd(container.clone(), fd).await {
                warn!(container_id = %container.id, error = %err, "notify fd loop ended");
            }
        });
    }

    async fn serve_fd(
        self: Arc<Self>,
        container: Arc<Container>,
        fd: OwnedFd,
    ) -> std::io::Result<()> {
        let fd = Arc::new(sys::async_fd(fd)?);
        loop {
            let mut guard = fd.readable().await?;
            // The fd is edge-triggered in tokio and RECV blocks when nothing is pending: ask
            // the kernel directly what is there before each RECV.
            let revents = poll_now(fd.get_ref());
            if revents.contains(PollFlags::IN) {
                match sys::recv(fd.get_ref().as_fd()) {
                    Ok(notif) => self.answer_or_spawn(&container, &fd, notif),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                }
                continue;
            }
            if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                debug!(container_id = %container.id, "notify fd hung up");
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Answers inline when the decision needs no waiting (the common, cached case); otherwise
    /// hands the notification to its own task so that this fd's other execs go on.
    fn answer_or_spawn(
        self: &Arc<Self>,
        container: &Arc<Container>,
        fd: &Arc<AsyncFd<OwnedFd>>,
        notif: Notification,
    ) {
        let started = Instant::now();
        let fd_ref = fd.get_ref().as_fd();
        if let Some(assessed) = exec::assess(container, fd_ref, &notif).now_or_never() {
            self.finish(container, fd_ref, &notif, Ok(assessed), started);
            return;
        }
        let (shared, container, fd) = (self.clone(), container.clone(), fd.clone());
        tokio::spawn(async move {
            let fd_ref = fd.get_ref().as_fd();
            let timeout = shared.config.decision_timeout;
            let assessed = tokio::time::timeout(timeout, exec::assess(&container, fd_ref, &notif))
                .await
                .map_err(|_| format!("decision timed out after {timeout:?}"));
            shared.finish(&container, fd_ref, &notif, assessed, started);
        });
    }

    fn finish(
        &self,
        container: &Arc<Container>,
        fd_ref: std::os::fd::BorrowedFd<'_>,
        notif: &Notification,
        assessed: Result<Result<Assessment, exec::AssessError>, String>,
        started: Instant,
    ) {
        let result = match assessed {
            Ok(Ok(Assessment::Gone)) => return,
            Ok(Ok(Assessment::Errno(errno))) => sys::send_errno(fd_ref, notif.id, errno),
            Ok(Ok(Assessment::Target(target))) => {
                let (facts, decision) = self.strictest(container, &target);
                let outcome = decision.outcome;
                // The event (with argv) is read while the caller still waits: after the answer
                // its memory may already belong to the program it executed.
                let event = (outcome != Outcome::Allow)
                    .then(|| self.event(container, notif, &facts, Some(decision), None));
                let sent = match outcome {
                    Outcome::Deny => sys::send_errno(fd_ref, notif.id, libc::EPERM),
                    Outcome::Allow | Outcome::Alert => sys::send_continue(fd_ref, notif.id),
                };
                self.stats.record(started.elapsed());
                if let Some(event) = event {
                    self.sink.emit(event);
                }
                sent
            }
            Ok(Err(err)) => self.fail(container, fd_ref, notif, err.to_string()),
            Err(reason) => self.fail(container, fd_ref, notif, reason),
        };
        if let Err(err) = result {
            // ENOENT: the caller was interrupted or died; the kernel re-sends if it restarts.
            if err.raw_os_error() != Some(libc::ENOENT) {
                warn!(container_id = %container.id, pid = notif.pid, error = %err,
                      "answering a notification failed");
            }
        }
    }

    /// Decides the target and every file loaded with it; the strictest outcome answers (the
    /// first one on a tie, so the executed file itself wins over its interpreters).
    fn strictest<'t>(
        &self,
        container: &Arc<Container>,
        target: &'t exec::Target,
    ) -> (ExecFacts<'t>, crate::decide::Decision) {
        let rank = |outcome: Outcome| match outcome {
            Outcome::Allow => 0,
            Outcome::Alert => 1,
            Outcome::Deny => 2,
        };
        let decide = |one: &'t exec::Target| {
            let facts = ExecFacts {
                class: one.verdict.class,
                path: &one.path,
                hash: one.verdict.hash,
                on_volume: one.verdict.on_volume,
            };
            let decision = self.decider.decide(&container.scope, &facts);
            (facts, decision)
        };
        let mut best = decide(target);
        for loaded in &target.loaded {
            let next = decide(loaded);
            if rank(next.1.outcome) > rank(best.1.outcome) {
                best = next;
            }
        }
        best
    }

    fn fail(
        &self,
        container: &Arc<Container>,
        fd: std::os::fd::BorrowedFd<'_>,
        notif: &Notification,
        reason: String,
    ) -> std::io::Result<()> {
        let policy = self.decider.failure_policy();
        let path = exec::requested_path(notif);
        warn!(container_id = %container.id, pid = notif.pid, path = %path, reason = %reason,
              failure_policy = ?policy, "exec decided by the failure policy");
        let outcome = match policy {
            FailurePolicy::Closed => Outcome::Deny,
            FailurePolicy::Open => Outcome::Alert,
        };
        let facts = ExecFacts {
            class: driftguard_policy::VerdictClass::NewFile,
            path: &path,
            hash: None,
            on_volume: false,
        };
        let mut event = self.event(container, notif, &facts, None, Some(reason));
        event.class = None;
        event.outcome = outcome;
        let sent = match outcome {
            Outcome::Deny => sys::send_errno(fd, notif.id, libc::EPERM),
            _ => sys::send_continue(fd, notif.id),
        };
        self.sink.emit(event);
        sent
    }

    fn event(
        &self,
        container: &Arc<Container>,
        notif: &Notification,
        facts: &ExecFacts<'_>,
        decision: Option<crate::decide::Decision>,
        error: Option<String>,
    ) -> ExecEvent {
        let scope = &container.scope;
        ExecEvent {
            container_id: container.id.clone(),
            namespace: scope.namespace.clone(),
            pod: scope.pod_name.clone(),
            container: scope.container_name.clone(),
            image: scope.image_name.clone(),
            pid: notif.pid,
            path: facts.path.to_string(),
            argv: exec::event_argv(notif),
            parent: parent_of(notif.pid),
            class: Some(facts.class),
            hash: facts.hash.map(hex::encode),
            rule: decision
                .as_ref()
                .map(|d| d.rule.clone())
                .unwrap_or_default(),
            action: decision.as_ref().map(|d| d.action),
            outcome: decision
                .as_ref()
                .map(|d| d.outcome)
                .unwrap_or(Outcome::Deny),
            allow_listed: decision.as_ref().is_some_and(|d| d.allow_listed),
            error,
        }
    }
}

/// `poll(fd, POLLIN, 0)`: what the kernel reports right now.
fn poll_now(fd: &OwnedFd) -> PollFlags {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    match rustix::event::poll(
        &mut fds,
        Some(&rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    ) {
        Ok(_) => fds[0].revents(),
        Err(_) => PollFlags::empty(),
    }
}

/// The parent of `pid` (host pid namespace) and its executable, read from procfs. Best effort:
/// the parent may already be gone, and a container may name its executable anything.
fn parent_of(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{ppid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Some((ppid, exe))
}
