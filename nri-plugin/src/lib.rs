//! The driftguard NRI plugin.
//!
//! Registers with containerd over NRI, learns every pod and container (at synchronization and
//! at creation), builds the policy scope of each container (cluster, namespace, pod, labels,
//! container, image), and returns the container adjustments that carry that identity to the
//! runc wrapper and the supervisor, plus the seccomp notify policy on runtimes that accept it.
//!
//! Invariant: no slow work (hashing, file walks) ever runs inside an NRI request; the runtime
//! gives each request two seconds and fails open when a plugin is late.
