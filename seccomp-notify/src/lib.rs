//! The driftguard exec supervisor.
//!
//! Receives seccomp user-notify file descriptors from the OCI runtime (runc, crun) over a unix
//! socket, answers every `execve`/`execveat` of a monitored container after resolving the target
//! file inside the container's root and classifying it against the image, and owns the merging of
//! the notify rules into an OCI spec's `linux.seccomp` section.
//!
//! Modules: [`oci`] merges profiles; [`handoff`] receives fds; [`supervisor`] serves them
//! ([`exec`] decides one notification with [`target`], [`resolve`] and [`classify`]);
//! [`holder`] keeps duplicates across supervisor restarts; [`gate`] re-checks the file an
//! allowed exec really opens (fanotify); [`memfd`] makes memfds of a blocking container's pid
//! namespace non-executable. [`sys`], [`fanotify`] and [`memfd`] hold the only unsafe code.
//!
//! Invariant: when the supervisor cannot decide, the configured failure policy answers (deny by
//! default); a decision is never made on a path name alone.

pub mod adapters;
pub mod binfmt;
pub mod classify;
pub mod container;
pub mod decide;
pub mod exec;
pub mod fanotify;
pub mod gate;
pub mod handoff;
pub mod holder;
pub mod memfd;
pub mod mountinfo;
pub mod oci;
pub mod recover;
pub mod resolve;
pub mod stats;
pub mod supervisor;
pub mod sys;
pub mod target;

pub use decide::{Decider, Decision, EventSink, ExecEvent, ExecFacts, ImageSource};
pub use supervisor::{alive_path, Supervisor, SupervisorConfig, SupervisorError};

/// Locks a mutex whose data stays consistent even if a holder panicked (every guarded update
/// here is a single insert, remove or replace).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
