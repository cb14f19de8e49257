//! The driftguard exec supervisor.
//!
//! Receives seccomp user-notify file descriptors from the OCI runtime (runc, crun) over a unix
//! socket, answers every `execve`/`execveat` of a monitored container after resolving the target
//! file inside the container's root and classifying it against the image, and owns the merging of
//! the notify rules into an OCI spec's `linux.seccomp` section.
//!
//! Invariant: when the supervisor cannot decide, the configured failure policy answers (deny by
//! default); a decision is never made on a path name alone.

pub mod oci;
