//! The validated policy and its evaluation: first matching rule, then the exec's verdict class
//! and the policy's options turn into an [`Outcome`].
//!
//! Invariants: rule names are unique (the default rule's name included), the default rule has
//! no conditions, and every condition and allow entry was validated when built. A [`Policy`]
//! that violates them cannot be built through this crate's API (fields are private; edits go
//! through [`crate::edit`], which re-checks them).
//!
//! Limits: evaluation is linear in the number of rules; policies are expected to hold tens of
//! rules, not thousands. The supervisor should cache the matched rule per container.

use std::fmt;

use crate::rule::{Condition, Invalid, Rule};
use crate::scope::{Action, Scope};
use crate::verdict::{FailurePolicy, Outcome, VerdictClass};

/// Name of the default rule in a new policy.
pub const DEFAULT_RULE_NAME: &str = "default";

/// How one class of exec is treated, independent of the rule (a policy option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Treatment {
    /// Never report.
    Allow,
    /// Allow and alert, whatever the rule's action.
    Alert,
    /// Deny and alert, whatever the rule's action.
    Block,
    /// Treat as drift: the matched rule's action decides.
    Drift,
}

impl Treatment {
    /// The treatment's name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Treatment::Allow => "allow",
            Treatment::Alert => "alert",
            Treatment::Block => "block",
            Treatment::Drift => "drift",
        }
    }

    /// Parses a treatment name as written in policy files.
    pub fn parse(name: &str) -> Result<Treatment, Invalid> {
        match name {
            "allow" => Ok(Treatment::Allow),
            "alert" => Ok(Treatment::Alert),
            "block" => Ok(Treatment::Block),
            "drift" => Ok(Treatment::Drift),
            other => Err(Invalid::new(
                format!("unknown treatment `{other}`"),
                "use one of allow, alert, block, drift",
            )),
        }
    }
}

impl fmt::Display for Treatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options that sit next to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Image content made executable after the fact (`modeDrift`, default alert).
    pub mode_drift: Treatment,
    /// Image content at a new path (`relocatedImageBinaries`, default alert).
    pub relocated_image_binaries: Treatment,
    /// New or modified files on volumes (`volumeFiles`, default drift).
    pub volume_files: Treatment,
    /// The image's dynamic loader run directly with an image program (`directLoader`, default
    /// allow). Its program argument is read from the caller's memory, which a racing thread
    /// can change after the check; a non-allow treatment refuses such runs outright.
    pub direct_loader: Treatment,
    /// What happens when the supervisor cannot decide (`failurePolicy`, default closed).
    pub failure_policy: FailurePolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode_drift: Treatment::Alert,
            relocated_image_binaries: Treatment::Alert,
            volume_files: Treatment::Drift,
            direct_loader: Treatment::Allow,
            failure_policy: FailurePolicy::Closed,
        }
    }
}

impl fmt::Display for Options {
    /// `modeDrift=alert relocatedImageBinaries=alert volumeFiles=drift directLoader=allow
    /// failurePolicy=closed`: every option with its key in policy files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failure = match self.failure_policy {
            FailurePolicy::Closed => "closed",
            FailurePolicy::Open => "open",
        };
        write!(
            f,
            "modeDrift={} relocatedImageBinaries={} volumeFiles={} directLoader={} \
             failurePolicy={failure}",
            self.mode_drift, self.relocated_image_binaries, self.volume_files, self.direct_loader
        )
    }
}

/// Facts about one exec, as the supervisor established them.
#[derive(Debug, Clone, Copy)]
pub struct ExecFacts<'a> {
    /// What the exec target is relative to the image.
    pub class: VerdictClass,
    /// The resolved path inside the container.
    pub path: &'a str,
    /// BLAKE3 of the file's content, when computed.
    pub hash: Option<[u8; 32]>,
    /// Whether the file lives on a volume mount rather than the container's rootfs.
    pub on_volume: bool,
}

/// What the policy decided for one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The matched rule's name.
    pub rule: String,
    /// The matched rule's action.
    pub action: Action,
    /// The exec's verdict class.
    pub class: VerdictClass,
    /// Allow, alert or deny.
    pub outcome: Outcome,
    /// Whether the rule's allow list exempted the exec.
    pub allow_listed: bool,
}

/// A validated policy: ordered rules above a default rule, plus options.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub(crate) metadata: crate::file::Metadata,
    pub(crate) rules: Vec<Rule>,
    pub(crate) default_rule: Rule,
    pub(crate) options: Options,
}

impl Policy {
    /// The policy a new install gets: `kube-system` (namespace equals kube-system → alert)
    /// above the default rule (ignore).
    pub fn default_policy() -> Policy {
        let mut kube_system = Rule::new("kube-system", Action::Alert);
        kube_system.description = "System components: report drift, never block it".into();
        if let Ok(cond) = Condition::new(
            crate::rule::Field::Namespace,
            crate::rule::Operator::Equals,
            "kube-system",
        ) {
            kube_system.conditions.push(cond);
        }
        let mut default_rule = Rule::new(DEFAULT_RULE_NAME, Action::Ignore);
        default_rule.description = "Applies when no rule above matches".into();
        Policy {
            metadata: crate::file::Metadata {
                name: Some("default".into()),
                ..Default::default()
            },
            rules: vec![kube_system],
            default_rule,
            options: Options::default(),
        }
    }

    /// The policy's name (`metadata.name`).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("default")
    }

    /// The ordered rules above the default rule.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule that applies when no other matches.
    pub fn default_rule(&self) -> &Rule {
        &self.default_rule
    }

    /// The options next to the rules.
    pub fn options(&self) -> Options {
        self.options
    }

    /// What the supervisor does when it cannot decide.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.options.failure_policy
    }

    /// Every rule in evaluation order, the default rule last.
    pub fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().chain(std::iter::once(&self.default_rule))
    }

    /// Finds a rule (the default rule included) by name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.all_rules().find(|r| r.name == name)
    }

    /// The first rule whose scope matches, else the default rule.
    pub fn evaluate(&self, scope: &Scope) -> &Rule {
        self.rules
            .iter()
            .find(|r| r.matches(scope))
            .unwrap_or(&self.default_rule)
    }

    /// Decides one exec in the container described by `scope`.
    pub fn decide(&self, scope: &Scope, exec: &ExecFacts<'_>) -> Decision {
        self.decide_with_rule(self.evaluate(scope), exec)
    }

    /// Decides one exec under an already evaluated rule (for callers that cache the rule per
    /// container).
    pub fn decide_with_rule(&self, rule: &Rule, exec: &ExecFacts<'_>) -> Decision {
        let mut decision = Decision {
            rule: rule.name.clone(),
            action: rule.action,
            class: exec.class,
            outcome: Outcome::Allow,
            allow_listed: false,
        };
        if matches!(
            exec.class,
            VerdictClass::ImageFile | VerdictClass::MetadataCopyUp
        ) || rule.action == Action::Ignore
        {
            return decision;
        }
        if rule.allows(exec.path, exec.hash) {
            decision.allow_listed = true;
            return decision;
        }
        decision.outcome = match self.treatment(exec) {
            Treatment::Allow => Outcome::Allow,
            Treatment::Alert => Outcome::Alert,
            Treatment::Block => Outcome::Deny,
            Treatment::Drift => match rule.action {
                Action::Block => Outcome::Deny,
                Action::Alert => Outcome::Alert,
                Action::Ignore => Outcome::Allow,
            },
        };
        decision
    }

    fn treatment(&self, exec: &ExecFacts<'_>) -> Treatment {
        match exec.class {
            VerdictClass::ModeDrift => self.options.mode_drift,
            VerdictClass::RelocatedImageBinary => self.options.relocated_image_binaries,
            VerdictClass::DirectLoader => self.options.direct_loader,
            VerdictClass::NewFile | VerdictClass::ModifiedImageFile if exec.on_volume => {
                self.options.volume_files
            }
            _ => Treatment::Drift,
        }
    }

    /// Explains which rule matches `scope` and why, condition by condition. Rules below the
    /// first match are not evaluated and not listed.
    pub fn explain(&self, scope: &Scope) -> Explanation {
        let mut rules = Vec::new();
        for rule in &self.rules {
            let trace = RuleTrace::of(rule, scope);
            let matched = trace.matched;
            rules.push(trace);
            if matched {
                return Explanation {
                    rules,
                    matched_default: false,
                };
            }
        }
        rules.push(RuleTrace::of(&self.default_rule, scope));
        Explanation {
            rules,
            matched_default: true,
        }
    }
}

/// The result of [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The rules evaluated, in order; the last one matched.
    pub rules: Vec<RuleTrace>,
    /// Whether no rule matched and the default rule applies.
    pub matched_default: bool,
}

impl Explanation {
    /// The rule that applies.
    pub fn matched(&self) -> &RuleTrace {
        // Invariant: explain() always pushes at least the matching rule.
        &self.rules[self.rules.len() - 1]
    }
}

/// How one rule fared against a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// The rule's name.
    pub name: String,
    /// The rule's action.
    pub action: Action,
    /// Whether all conditions held.
    pub matched: bool,
    /// Each condition with the observed value and whether it held.
    pub conditions: Vec<ConditionTrace>,
}

impl RuleTrace {
    fn of(rule: &Rule, scope: &Scope) -> RuleTrace {
        let conditions: Vec<ConditionTrace> = rule
            .conditions
            .iter()
            .map(|c| ConditionTrace {
                condition: c.to_string(),
                observed: c.observed(scope),
                holds: c.matches(scope),
            })
            .collect();
        RuleTrace {
            name: rule.name.clone(),
            action: rule.action,
            matched: conditions.iter().all(|c| c.holds),
            conditions,
        }
    }
}

/// How one condition fared against a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionTrace {
    /// The condition as written (`field operator value`).
    pub condition: String,
    /// The scope's value for the field (labels as `k=v,k=v`).
    pub observed: String,
    /// Whether the condition held.
    pub holds: bool,
}
