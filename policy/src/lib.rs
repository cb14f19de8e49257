//! Drift policy.
//!
//! A policy is an ordered list of rules above a default rule. Each rule has a scope (conditions
//! on cluster, namespace, pod name, pod labels, container name and image name), an action
//! (`block`, `alert` or `ignore`) and an allow list of processes. Rules are evaluated top to
//! bottom; the first rule whose scope matches decides; the default rule decides when none does.
//!
//! Modules: [`rule`] (conditions, allow entries), [`policy`] (evaluation and decisions),
//! [`file`] (the YAML document), [`edit`] (changes and atomic writes), [`store`] (hot reload),
//! [`event`] (the alert record), [`alerts`] (sinks) and [`metrics`] (Prometheus).
//!
//! Content hashes cross crate boundaries as `[u8; 32]` (BLAKE3 output) and are shown as
//! lower-case hex.

pub mod alerts;
pub mod edit;
pub mod event;
pub mod file;
pub mod metrics;
pub mod policy;
pub mod rule;
pub mod scope;
pub mod store;
pub mod verdict;

pub use alerts::{Alerts, AlertsConfig, HttpSinkConfig};
pub use edit::{write_atomic, EditError, Move, RuleEdit};
pub use event::{DriftEvent, ParentProcess, Severity};
pub use file::{PolicyError, DEFAULT_POLICY_PATH, RENDERED_HEADER};
pub use metrics::Metrics;
pub use policy::{Decision, ExecFacts, Explanation, Options, Policy, Treatment};
pub use rule::{AllowEntry, Condition, Field, Invalid, Operator, Rule};
pub use scope::{Action, Scope};
pub use store::{PolicyStore, PolicyWatcher};
pub use verdict::{FailurePolicy, Outcome, VerdictClass};
