//! The question the plugin asks policy at container creation, as a trait.
//!
//! The daemon implements [`ContainerPolicy`] over its policy store; [`FixedPolicy`] answers
//! the same rule for every container (tests, and a node without a policy file).
//!
//! Invariant: `rule_for` runs inside the runtime's 2-second request budget and must answer from
//! memory, without I/O.

use driftguard_policy::{Action, Scope};

/// Chooses the rule that governs a container.
pub trait ContainerPolicy: Send + Sync {
    /// The name of the matching rule and its action for drift.
    fn rule_for(&self, scope: &Scope) -> (String, Action);

    /// Whether containers with this scope are monitored at all (seccomp notify injected).
    /// The default monitors everything whose action is not [`Action::Ignore`].
    fn monitored(&self, scope: &Scope) -> bool {
        self.rule_for(scope).1 != Action::Ignore
    }
}

/// A policy with one rule for every container.
#[derive(Debug, Clone)]
pub struct FixedPolicy {
    /// Rule name reported for every container.
    pub rule: String,
    /// Its action.
    pub action: Action,
}

impl ContainerPolicy for FixedPolicy {
    fn rule_for(&self, _scope: &Scope) -> (String, Action) {
        (self.rule.clone(), self.action)
    }
}
