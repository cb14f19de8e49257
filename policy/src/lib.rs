//! Drift policy.
//!
//! A policy is an ordered list of rules above a default rule. Each rule has a scope (conditions
//! on cluster, namespace, pod name, pod labels, container name and image name), an action
//! (`block`, `alert` or `ignore`) and an allow list of processes. Rules are evaluated top to
//! bottom; the first rule whose scope matches decides; the default rule decides when none does.
//!
//! Content hashes cross crate boundaries as `[u8; 32]` (BLAKE3 output) and are shown as
//! lower-case hex.

pub mod scope;
pub mod verdict;

pub use scope::{Action, Scope};
pub use verdict::{FailurePolicy, Outcome, VerdictClass};
