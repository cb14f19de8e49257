//! The hand-off socket's life: one supervisor per socket, the listener shared with the fd
//! holder across restarts, the liveness socket, hand-offs accepted, and the holder kept in
//! step (its notify fds taken back at start, everything given again to a restarted holder).
//!
//! Invariants: a supervisor holds `<socket>.lock` for as long as it serves; a listener is
//! reused only when its socket path still names the socket file it was bound to, and a
//! listener that is not reused is drained (what waited in its backlog is served) before it
//! is closed.
//!
//! Limits: a holder restarted while the supervisor runs is found at the next check
//! ([`HOLDER_CHECK`]); a supervisor that dies before then leaves the new holder without
//! those fds.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tracing::{info, warn};

use super::{Shared, SupervisorError};
use crate::handoff::{self, ProcessState};
use crate::holder;
use crate::lock;

/// How often the supervisor looks whether the fd holder was restarted.
const HOLDER_CHECK: Duration = Duration::from_secs(2);

/// The socket only a serving supervisor listens on: `<socket_path>.alive`. A runtime wrapper
/// probes it to tell a running supervisor from a hand-off socket kept by the fd holder alone.
pub fn alive_path(socket_path: &Path) -> PathBuf {
    let mut name = socket_path.as_os_str().to_owned();
    name.push(".alive");
    PathBuf::from(name)
}

/// Takes over the holder's listener when `path` still names the socket it was bound to.
fn reuse_listener(path: &Path, kept: &holder::KeptListener) -> Result<UnixListener, String> {
    if Path::new(&kept.path) != path {
        return Err(format!("it was bound to {}", kept.path));
    }
    let meta =
        std::fs::symlink_metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if !meta.file_type().is_socket() || (meta.dev(), meta.ino()) != (kept.dev, kept.ino) {
        return Err(format!("{} names another file now", path.display()));
    }
    match rustix::net::sockopt::socket_acceptconn(&kept.fd) {
        Ok(true) => {}
        _ => return Err("it is not a listening socket".into()),
    }
    let fd = kept.fd.try_clone().map_err(|err| err.to_string())?;
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    UnixListener::from_std(listener).map_err(|err| err.to_string())
}

/// Takes `<socket_path>.lock` (`flock`, exclusive): one supervisor per socket. A second one
/// would take the holder's listener and fds from the first and, when it stops, remove the
/// liveness socket the first still serves.
pub(super) fn lock_instance(socket_path: &Path) -> Result<OwnedFd, SupervisorError> {
    let mut name = socket_path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let fail = |source| SupervisorError::Socket {
        path: lock.clone(),
        source,
    };
    socket_dir(socket_path).map_err(fail)?;
    let fd = rustix::fs::open(
        &lock,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| fail(e.into()))?;
    match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SupervisorError::AlreadyRunning {
            socket: socket_path.to_path_buf(),
            lock,
        }),
        Err(err) => Err(fail(err.into())),
    }
}

/// Creates the socket's directory, root-only.
fn socket_dir(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub(super) fn bind(path: &Path) -> Result<UnixListener, SupervisorError> {
    let fail = |source| SupervisorError::Socket {
        path: path.to_path_buf(),
        source,
    };
    socket_dir(path).map_err(fail)?;
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(fail(err)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

impl Shared {
    /// The hand-off listener, whether the fd holder keeps a copy of it, and the holder's
    /// previous listener when its path names another file now (what waits in its backlog is
    /// still served, see [`Shared::drain`]).
    pub(super) async fn hand_off_listener(
        &self,
    ) -> Result<(UnixListener, bool, Option<OwnedFd>), SupervisorError> {
        let path = self.config.socket_path.clone();
        let Some(holder_socket) = self.config.holder_socket.clone() else {
            return Ok((bind(&path)?, false, None));
        };
        let asked = holder_socket.clone();
        let mut stale = None;
        match tokio::task::spawn_blocking(move || holder::take_listener(&asked)).await {
            Ok(Ok(Some(kept))) => match reuse_listener(&path, &kept) {
                Ok(listener) => {
                    info!(socket = %path.display(), "hand-off listener taken back from the fd holder");
                    *lock(&self.listener_kept) = Some(kept);
                    return Ok((listener, true, None));
                }
                Err(reason) => {
                    info!(socket = %path.display(), %reason,
                          "not reusing the fd holder's hand-off listener");
                    stale = Some(kept.fd);
                }
            },
            Ok(Ok(None)) => {}
            Ok(Err(err)) => warn!(error = %err,
                                  "fd holder unavailable; runtimes cannot hand off while no supervisor runs"),
            Err(err) => warn!(error = %err, "fd holder query failed"),
        }
        let listener = bind(&path)?;
        let kept = match (
            std::fs::symlink_metadata(&path),
            listener.as_fd().try_clone_to_owned(),
        ) {
            (Ok(meta), Ok(fd)) => {
                let kept = holder::KeptListener {
                    path: path.display().to_string(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                    fd,
                };
                tokio::task::spawn_blocking(move || {
                    holder::keep_listener(&holder_socket, &kept).map(|()| kept)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map(|kept| *lock(&self.listener_kept) = Some(kept))
            }
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        match kept {
            Ok(()) => Ok((listener, true, stale)),
            Err(err) => {
                warn!(error = %err,
                      "fd holder did not keep the hand-off listener; runtimes cannot hand off while no supervisor runs");
                Ok((listener, false, stale))
            }
        }
    }

    /// Asks the fd holder for its process id every [`HOLDER_CHECK`]: a holder that was restarted
    /// (another id) lost everything it held, so it is given every notify fd being served and the
    /// hand-off listener again. Without this, the next supervisor stop would leave those
    /// containers' execs failing with `ENOSYS`.
    pub(super) async fn resync_holder(
        self: Arc<Self>,
        holder_socket: PathBuf,
        known: Option<String>,
    ) {
        let ask = |socket: PathBuf| async move {
            tokio::task::spawn_blocking(move || holder::instance(&socket))
                .await
                .ok()
                .and_then(Result::ok)
        };
        let mut known = known;
        let mut tick = tokio::time::interval(HOLDER_CHECK);
        loop {
            tick.tick().await;
            let Some(now) = ask(holder_socket.clone()).await else {
                continue;
            };
            if known.as_ref() == Some(&now) {
                continue;
            }
            let shared = self.clone();
            let socket = holder_socket.clone();
            let given =
                tokio::task::spawn_blocking(move || shared.give_holder_everything(&socket)).await;
            match given {
                Ok(Ok(count)) => {
                    info!(
                        notify_fds = count,
                        "fd holder restarted; it holds every notify fd again"
                    );
                    known = Some(now);
                }
                Ok(Err(err)) => warn!(error = %err, "giving a restarted fd holder its fds failed"),
                Err(err) => warn!(error = %err, "giving a restarted fd holder its fds failed"),
            }
        }
    }

    fn give_holder_everything(&self, holder_socket: &Path) -> std::io::Result<usize> {
        if let Some(kept) = lock(&self.listener_kept).as_ref() {
            holder::keep_listener(holder_socket, kept)?;
        }
        let served: Vec<(Vec<u8>, Arc<OwnedFd>)> = lock(&self.served)
            .iter()
            .filter_map(|(raw, fd)| fd.upgrade().map(|fd| (raw.clone(), fd)))
            .collect();
        for (raw, fd) in &served {
            holder::put(holder_socket, raw, fd.try_clone()?)?;
        }
        Ok(served.len())
    }

    /// Accepts every hand-off waiting in the backlog of a listener that is no longer used (its
    /// socket file was removed or replaced while no supervisor ran), then closes it; returns
    /// the connections, to be served like any other.
    pub(super) fn drain(stale: OwnedFd) -> Vec<tokio::net::UnixStream> {
        let _ = rustix::io::ioctl_fionbio(&stale, true);
        let mut waiting = Vec::new();
        loop {
            match rustix::net::accept_with(&stale, rustix::net::SocketFlags::CLOEXEC) {
                Ok(conn) => {
                    let stream = std::os::unix::net::UnixStream::from(conn);
                    let stream = stream
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::UnixStream::from_std(stream));
                    match stream {
                        Ok(stream) => waiting.push(stream),
                        Err(err) => warn!(error = %err, "a waiting hand-off was lost"),
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    warn!(error = %err, "draining the previous hand-off listener failed");
                    break;
                }
            }
        }
        info!(
            hand_offs = waiting.len(),
            "previous hand-off listener drained and closed"
        );
        waiting
    }

    pub(super) async fn accept(self: Arc<Self>, stream: tokio::net::UnixStream) {
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
        self.serve(handoff.state, handoff.raw, handoff.notify_fd);
    }

    pub(super) async fn recover(self: Arc<Self>, holder_socket: PathBuf) {
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
                    self.clone().serve(state, raw, fd);
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
}
