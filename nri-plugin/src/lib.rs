//! The driftguard NRI plugin.
//!
//! Registers with containerd over NRI, learns every pod and container (at synchronization and
//! at creation), builds the policy scope of each container (cluster, namespace, pod, labels,
//! container, image), and returns the container adjustments that carry that identity to the
//! runc wrapper and the supervisor, plus the seccomp notify policy on runtimes that accept it.
//!
//! Modules: [`plugin`] (entry point, connection lifecycle), [`service`] (the NRI plugin service
//! of one connection), [`adjust`] (the CreateContainer answer), [`seccomp`] (the native
//! seccomp path), [`scope`], [`runtime`] (capabilities by runtime and NRI version), [`policy`]
//! (the policy question as a trait) and [`hooks`] (events for the daemon).
//!
//! Invariant: no slow work (hashing, file walks) ever runs inside an NRI request; the runtime
//! gives each request two seconds and fails open when a plugin is late.

pub mod adjust;
pub mod hooks;
pub mod plugin;
pub mod policy;
pub mod runtime;
pub mod scope;
pub mod seccomp;
pub mod service;

pub use driftguard_policy::{Action, Scope};
pub use hooks::{ContainerInfo, NoHooks, PluginEvent, PluginHooks, PodInfo};
pub use plugin::{ConfigureHook, Plugin, PluginConfig, PluginError, DEFAULT_SOCKET};
pub use policy::{ContainerPolicy, FixedPolicy};
pub use runtime::RuntimeInfo;
