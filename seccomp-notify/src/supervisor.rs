//! The supervisor: accept hand-offs, serve every notify fd, answer every exec.
//!
//! Each notify fd gets its own serving thread that blocks in `poll` on it and receives and
//! answers notifications itself when the decision needs no waiting — the common case of a
//! cached verdict, which so costs the exec one round trip to this thread and a handful of
//! syscalls, with no async runtime in between. The fd asks the kernel for synchronous wake-ups
//! (Linux ≥ 6.6), so caller and thread hand the CPU to each other instead of waking across
//! CPUs. A decision that has to wait (hashing a file, an image index still being built) moves,
//! already started, to a task of the tokio runtime, so one slow decision never holds up
//! another exec, in that container or any other; the thread goes back to its fd at once. A
//! thread ends when the kernel reports `POLLHUP` (no task uses the filter any more) or the
//! supervisor stops.
//!
//! Every fd is first given to the fd holder (when configured): if the supervisor dies, the
//! holder's duplicate keeps the filter's listener alive, execs wait instead of failing with
//! `ENOSYS`, and the next supervisor takes the fds back at start.
//!
//! Invariants: every notification gets exactly one answer attempt; an internal error or a
//! timeout is answered by the policy's failure policy (deny with `EPERM` by default); a
//! denied exec and an alert produce one [`ExecEvent`]. Only the fd's own thread receives from
//! it.
//!
//! Limits: decisions are bounded by `decision_timeout`; a caller stopped in the middle of its
//! exec (SIGSTOP) keeps its notification pending, which costs nothing but memory. One thread
//! per notify fd (a container's init and each `runc exec`), with a small stack
//! ([`SERVE_STACK`]); if the system refuses a new thread, that fd is not served and its
//! container's execs wait for the next supervisor (the fd holder keeps the fd).

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use driftguard_policy::{FailurePolicy, Outcome};
use rustix::event::EventfdFlags;
use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use crate::container::Container;
use crate::decide::{Decider, EventSink, ExecEvent, ExecFacts, ImageSource};
use crate::exec::{self, Assessment, CallerMemory};
use crate::handoff::ProcessState;
use crate::holder;
use crate::lock;
use crate::stats::DecisionStats;
use crate::sys::{self, Notification, Wait};

/// Stack size of a serving thread: the inline decision path has no recursion and page-sized
/// buffers at most.
pub const SERVE_STACK: usize = 256 * 1024;

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
    /// Re-check every exec open of a monitored container with fanotify (the exec gate, see
    /// [`crate::gate`]): closes the race after an allowed exec.
    pub exec_gate: bool,
    /// Set `vm.memfd_noexec = 2` in the pid namespace of each container whose policy blocks
    /// fileless execs, before its notify fd is served (see [`crate::memfd`]): closes the memfd
    /// race the exec gate cannot see.
    pub memfd_lockdown: bool,
}

impl SupervisorConfig {
    /// A configuration with the defaults: 2 s decisions, `/proc/self/mountinfo`.
    pub fn new(socket_path: PathBuf, holder_socket: Option<PathBuf>) -> SupervisorConfig {
        SupervisorConfig {
            socket_path,
            holder_socket,
            decision_timeout: Duration::from_secs(2),
            mountinfo_path: PathBuf::from("/proc/self/mountinfo"),
            exec_gate: true,
            memfd_lockdown: true,
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
    /// Another supervisor serves this socket (it holds the lock file).
    #[error("another supervisor already serves {socket} (it holds {lock}); stop it first")]
    AlreadyRunning {
        /// The hand-off socket.
        socket: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

struct Shared {
    config: SupervisorConfig,
    decider: Arc<dyn Decider>,
    images: Arc<dyn ImageSource>,
    sink: Arc<dyn EventSink>,
    containers: Mutex<HashMap<String, Weak<Container>>>,
    stats: Arc<DecisionStats>,
    gate: Option<crate::gate::Gate>,
    memfd: Option<crate::memfd::Lockdown>,
    /// An eventfd, set when the supervisor runs and readable once it stops: every serving
    /// thread polls it too.
    stop: OnceLock<OwnedFd>,
    /// Every notify fd being served, with its hand-off JSON: what a restarted fd holder is
    /// given again.
    served: Mutex<Vec<(Vec<u8>, Weak<OwnedFd>)>>,
    /// The hand-off listener as the holder keeps it (when it does).
    listener_kept: Mutex<Option<holder::KeptListener>>,
}

/// The exec supervisor.
pub struct Supervisor {
    shared: Arc<Shared>,
    ready: tokio::sync::watch::Sender<bool>,
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
            gate: crate::gate::Gate::for_config(&config, &decider, &sink),
            memfd: config.memfd_lockdown.then(crate::memfd::Lockdown::default),
            config,
            decider,
            images,
            sink,
            containers: Mutex::new(HashMap::new()),
            stats: Arc::new(DecisionStats::default()),
            stop: OnceLock::new(),
            served: Mutex::new(Vec::new()),
            listener_kept: Mutex::new(None),
        };
        Supervisor {
            shared: Arc::new(shared),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Becomes `true` once this supervisor serves (its liveness socket listens); the sender is
    /// dropped when [`Supervisor::run`] returns. Another process's liveness socket, or one a
    /// killed supervisor left behind, says nothing about this one.
    pub fn ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Decision-time statistics, live.
    pub fn stats(&self) -> Arc<DecisionStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes: takes back the holder's fds, then accepts hand-offs.
    ///
    /// The listening hand-off socket is shared with the fd holder: a supervisor takes the
    /// holder's copy when its path still names it (so hand-offs that arrived while no supervisor
    /// ran are served now), else binds a new one and gives the holder a copy. On the way out
    /// the socket file stays when the holder keeps the listener, so runtimes can go on handing
    /// off; the [`alive_path`] socket, which only a serving supervisor listens on, is removed.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SupervisorError> {
        sys::check_notif_sizes().map_err(SupervisorError::Kernel)?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC)
            .map_err(|err| SupervisorError::Kernel(err.into()))?;
        let _ = self.shared.stop.set(stop);
        // Held until this function returns (the kernel drops it if the process dies).
        let _lock = lock_instance(&self.shared.config.socket_path)?;
        // The holder's id before anything is taken from it: a holder restarted from here on is
        // seen as new by the re-sync below and given everything.
        let holder_id = match self.shared.config.holder_socket.clone() {
            Some(socket) => tokio::task::spawn_blocking(move || holder::instance(&socket))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let (listener, kept, stale) = self.shared.hand_off_listener().await?;
        if let Some(holder_socket) = self.shared.config.holder_socket.clone() {
            self.shared.clone().recover(holder_socket).await;
        }
        // Hand-offs being received and given to the holder: a clean stop waits for them, so
        // no notify fd that runc handed over is closed before the holder has a copy.
        let mut accepting = tokio::task::JoinSet::new();
        for stream in stale.map(Shared::drain).unwrap_or_default() {
            accepting.spawn(self.shared.clone().accept(stream));
        }
        if let Some(holder_socket) = self.shared.config.holder_socket.clone() {
            tokio::spawn(self.shared.clone().resync_holder(holder_socket, holder_id));
        }
        let alive_socket = alive_path(&self.shared.config.socket_path);
        let alive = bind(&alive_socket)?;
        self.ready.send_replace(true);
        info!(socket = %self.shared.config.socket_path.display(), kept_by_holder = kept,
              "supervisor listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        accepting.spawn(self.shared.clone().accept(stream));
                    }
                    Err(err) => warn!(error = %err, "accepting a hand-off failed"),
                },
                Some(_) = accepting.join_next(), if !accepting.is_empty() => {}
                // A liveness probe: accepted and closed.
                _ = alive.accept() => {}
            }
        }
        let _ = std::fs::remove_file(&alive_socket);
        let finishing = async { while accepting.join_next().await.is_some() {} };
        if tokio::time::timeout(ACCEPT_GRACE, finishing).await.is_err() {
            warn!("hand-offs still being received at the stop were dropped");
        }
        if !kept {
            let _ = std::fs::remove_file(&self.shared.config.socket_path);
        }
        // Never read: the eventfd stays readable and ends every serving thread.
        if let Some(stop) = self.shared.stop.get() {
            let _ = rustix::io::write(stop, &1u64.to_ne_bytes());
        }
        info!("supervisor stopped");
        Ok(())
    }
}

/// How long a clean stop waits for hand-offs being received (each reads within 5 s).
const ACCEPT_GRACE: Duration = Duration::from_secs(6);

mod listener;
pub use listener::alive_path;
use listener::{bind, lock_instance};

impl Shared {
    fn container(&self, state: &ProcessState) -> Arc<Container> {
        let mut containers = lock(&self.containers);
        containers.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = containers.get(&state.state.id).and_then(Weak::upgrade) {
            return existing;
        }
        let mountinfo = std::fs::read_to_string(&self.config.mountinfo_path).unwrap_or_default();
        let container = Arc::new(
            Container::from_state(state, &mountinfo, self.images.clone())
                .with_decision_timeout(self.config.decision_timeout),
        );
        if container.layers.is_none() {
            warn!(container_id = %state.state.id, bundle = %state.state.bundle.display(),
                  "container rootfs is not an overlay; every exec is classified by content");
        }
        containers.insert(state.state.id.clone(), Arc::downgrade(&container));
        container
    }

    fn serve(self: Arc<Self>, state: ProcessState, raw: Vec<u8>, fd: OwnedFd) {
        let fd = Arc::new(fd);
        {
            let mut served = lock(&self.served);
            served.retain(|(_, fd)| fd.strong_count() > 0);
            served.push((raw, Arc::downgrade(&fd)));
        }
        let container = self.container(&state);
        if let Some(gate) = &self.gate {
            gate.watch_logged(&container, &[state.pid, state.state.pid]);
        }
        info!(container_id = %container.id, pid = state.pid, status = %state.state.status,
              "serving notify fd");
        let runtime = Handle::current();
        let id = container.id.clone();
        let pids = [state.pid, state.state.pid];
        let spawned = std::thread::Builder::new()
            .name(format!("dg-notify-{}", id.get(..5).unwrap_or(&id)))
            .stack_size(SERVE_STACK)
            .spawn(move || {
                let _context = runtime.enter();
                // Before the fd is served, so the container's first exec waits for the lock;
                // on this thread, since it forks and waits.
                if let Some(memfd) = &self.memfd {
                    memfd.apply(&container, self.decider.as_ref(), &pids);
                }
                if let Err(err) = self.serve_fd(&runtime, &container, fd) {
                    warn!(container_id = %container.id, error = %err, "notify fd loop ended");
                }
            });
        if let Err(err) = spawned {
            error!(container_id = %id, error = %err,
                   "no thread to serve a notify fd: its execs wait for the next supervisor");
        }
    }

    /// The serving thread of one notify fd.
    fn serve_fd(
        self: &Arc<Self>,
        runtime: &Handle,
        container: &Arc<Container>,
        fd: Arc<OwnedFd>,
    ) -> std::io::Result<()> {
        if let Err(err) = sys::set_sync_wake_up(fd.as_fd()) {
            debug!(container_id = %container.id, error = %err,
                   "synchronous wake-ups unavailable; ordinary wake-ups are used");
        }
        let stop = self
            .stop
            .get()
            .ok_or_else(|| std::io::Error::other("supervisor is not running"))?;
        loop {
            match sys::wait(fd.as_fd(), stop.as_fd())? {
                Wait::Pending => match sys::recv(fd.as_fd()) {
                    Ok(notif) => self.answer_or_spawn(runtime, container, &fd, notif),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                },
                Wait::HungUp => {
                    debug!(container_id = %container.id, "notify fd hung up");
                    return Ok(());
                }
                Wait::Stopped => return Ok(()),
            }
        }
    }

    /// Answers inline when the decision needs no waiting (the common, cached case); otherwise
    /// the decision, as far as it got, continues in its own task on the runtime so that this
    /// fd's other execs go on.
    fn answer_or_spawn(
        self: &Arc<Self>,
        runtime: &Handle,
        container: &Arc<Container>,
        fd: &Arc<OwnedFd>,
        notif: Notification,
    ) {
        let started = Instant::now();
        let memory = Arc::new(CallerMemory::new(notif));
        let mut pending = assess_owned(container.clone(), fd.clone(), memory.clone());
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if let Poll::Ready(assessed) = pending.as_mut().poll(&mut cx) {
            self.finish(container, fd.as_fd(), &memory, Ok(assessed), started);
            return;
        }
        // The caller's memory is read here, on this fd's thread, never by a runtime worker: a
        // read that blocks (userfaultfd, FUSE) must not stall other containers' decisions.
        memory.read_all();
        let (shared, container, fd) = (self.clone(), container.clone(), fd.clone());
        let timeout = self.config.decision_timeout;
        let deadline = tokio::time::Instant::from_std(started + timeout);
        runtime.spawn(async move {
            let assessed = tokio::time::timeout_at(deadline, pending)
                .await
                .map_err(|_| format!("decision timed out after {timeout:?}"));
            shared.finish(&container, fd.as_fd(), &memory, assessed, started);
        });
    }

    fn finish(
        &self,
        container: &Arc<Container>,
        fd_ref: std::os::fd::BorrowedFd<'_>,
        memory: &CallerMemory,
        assessed: Result<Result<Assessment, exec::AssessError>, String>,
        started: Instant,
    ) {
        let notif = memory.notification();
        let result = match assessed {
            Ok(Ok(Assessment::Gone)) => return,
            Ok(Ok(Assessment::Errno(errno))) => sys::send_errno(fd_ref, notif.id, errno),
            Ok(Ok(Assessment::Target(mut target))) => {
                let opened = std::mem::take(&mut target.opened);
                let (facts, decision) = self.strictest(container, &target);
                let outcome = decision.outcome;
                // The event (with argv) is read while the caller still waits: after the answer
                // its memory may already belong to the program it executed.
                let event = (outcome != Outcome::Allow)
                    .then(|| self.event(container, memory, &facts, Some(decision), None));
                let sent = match outcome {
                    Outcome::Deny => sys::send_errno(fd_ref, notif.id, libc::EPERM),
                    Outcome::Allow | Outcome::Alert => {
                        if let Some(gate) = &self.gate {
                            gate.expect(notif.pid, opened);
                        }
                        sys::send_continue(fd_ref, notif.id)
                    }
                };
                self.stats.record(started.elapsed());
                if let Some(event) = event {
                    self.sink.emit(event);
                }
                sent
            }
            Ok(Err(err)) => self.fail(container, fd_ref, memory, err.to_string()),
            Err(reason) => self.fail(container, fd_ref, memory, reason),
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
        memory: &CallerMemory,
        reason: String,
    ) -> std::io::Result<()> {
        let notif = memory.notification();
        let policy = self.decider.failure_policy();
        let path = exec::requested_path(memory);
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
        let mut event = self.event(container, memory, &facts, None, Some(reason));
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
        memory: &CallerMemory,
        facts: &ExecFacts<'_>,
        decision: Option<crate::decide::Decision>,
        error: Option<String>,
    ) -> ExecEvent {
        let notif = memory.notification();
        ExecEvent {
            argv: exec::event_argv(memory),
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
            ..container.event(notif.pid, facts.path)
        }
    }
}

type Assessing = Pin<Box<dyn Future<Output = Result<Assessment, exec::AssessError>> + Send>>;

/// The assessment of one notification as a future that owns what it needs, so that a decision
/// started on a serving thread can finish on the runtime.
fn assess_owned(
    container: Arc<Container>,
    fd: Arc<OwnedFd>,
    memory: Arc<CallerMemory>,
) -> Assessing {
    Box::pin(async move {
        let notif = *memory.notification();
        exec::assess(&container, fd.as_fd(), &notif, &memory).await
    })
}

/// The parent of `pid` (host pid namespace) and its executable, read from procfs and shown as
/// [`crate::target::shown`] writes names. Best effort: the parent may already be gone, and a
/// container may name its executable anything — the kernel's ` (deleted)` suffix of a deleted
/// executable can be imitated by a live file of that name.
pub(crate) fn parent_of(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: fields follow the last ')'.
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let ppid: u32 = std::str::from_utf8(after)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let exe = std::fs::read_link(format!("/proc/{ppid}/exe"))
        .map(|p| crate::target::shown(p.as_os_str().as_encoded_bytes()))
        .unwrap_or_default();
    Some((ppid, exe))
}
