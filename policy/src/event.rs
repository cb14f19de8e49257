//! The alert record: one [`DriftEvent`] per reported exec, serialised as one JSON object, and
//! its Falco-compatible rendering for falcosidekick.
//!
//! Every string in an event that came from a container (path, argv, parent exe) is carried as
//! data: JSON escaping makes it safe in JSON lines, and the Falco `output` line quotes it. The
//! argv is capped at [`MAX_ARGV`] entries of at most [`MAX_ARG_LEN`] bytes so a hostile
//! container cannot make one alert arbitrarily large.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metrics::outcome_str;
use crate::policy::Decision;
use crate::rule::action_str;
use crate::scope::{Action, Scope};
use crate::verdict::{Outcome, VerdictClass};

/// Most argv entries kept in an event.
pub const MAX_ARGV: usize = 64;
/// Longest argv entry kept in an event, in bytes.
pub const MAX_ARG_LEN: usize = 1024;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Drift blocked or detected.
    High,
    /// Suspicious but expected in some workloads (reserved for optional detections).
    Medium,
    /// Operational notices (suppressed alerts, failure-policy decisions).
    Low,
    /// Informational records of allowed execs.
    Info,
}

impl Severity {
    /// The Falco priority falcosidekick routes on.
    pub fn falco_priority(self) -> &'static str {
        match self {
            Severity::High => "Critical",
            Severity::Medium => "Warning",
            Severity::Low => "Notice",
            Severity::Info => "Informational",
        }
    }
}

/// The parent of the process that executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentProcess {
    /// Parent pid (host pid namespace).
    pub pid: u32,
    /// Parent executable path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// One reported exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEvent {
    /// When the exec was decided (RFC 3339, UTC, nanoseconds).
    pub time: String,
    /// How urgent.
    pub severity: Severity,
    /// The matched rule.
    pub rule: String,
    /// The exec's verdict class.
    pub class: VerdictClass,
    /// Allow, alert or deny.
    pub outcome: Outcome,
    /// The matched rule's action.
    pub action: Action,
    /// Whether the rule's allow list exempted the exec.
    #[serde(default)]
    pub allow_listed: bool,
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Node name.
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// Pid of the process that executed (host pid namespace).
    pub pid: u32,
    /// The executed path as resolved inside the container.
    pub path: String,
    /// Arguments, capped (see [`MAX_ARGV`]).
    #[serde(default)]
    pub argv: Vec<String>,
    /// BLAKE3 of the executed file, lower-case hex, when computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The parent process, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentProcess>,
    /// Why the failure policy answered instead of the rule, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exec gate caught it: the kernel opened a different file for the exec than the one
    /// the exec was allowed for (a race), and that file was judged on its own.
    #[serde(default)]
    pub exec_gate: bool,
}

impl DriftEvent {
    /// An event for `decision` in the container described by `scope`, stamped now. Process
    /// fields (container id, node, pid, path, argv, hash, parent) start empty; set them.
    pub fn from_decision(decision: &Decision, scope: &Scope) -> DriftEvent {
        let severity = match decision.outcome {
            Outcome::Deny | Outcome::Alert => Severity::High,
            Outcome::Allow => Severity::Info,
        };
        DriftEvent {
            time: now_rfc3339(),
            severity,
            rule: decision.rule.clone(),
            class: decision.class,
            outcome: decision.outcome,
            action: decision.action,
            allow_listed: decision.allow_listed,
            container_id: String::new(),
            container_name: scope.container_name.clone(),
            pod: scope.pod_name.clone(),
            namespace: scope.namespace.clone(),
            image: scope.image_name.clone(),
            node: String::new(),
            cluster: scope.cluster.clone(),
            pid: 0,
            path: String::new(),
            argv: Vec::new(),
            hash: None,
            parent: None,
            error: None,
            exec_gate: false,
        }
    }

    /// Sets the content hash (BLAKE3) as hex.
    pub fn set_hash(&mut self, hash: [u8; 32]) {
        self.hash = Some(hex::encode(hash));
    }

    /// Sets argv, capped at [`MAX_ARGV`] entries of [`MAX_ARG_LEN`] bytes each.
    pub fn set_argv<I, S>(&mut self, argv: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.argv = argv
            .into_iter()
            .take(MAX_ARGV)
            .map(|a| truncate(a.as_ref(), MAX_ARG_LEN).to_string())
            .collect();
    }

    /// A one-line human summary, as the Falco `output` field and `driftguard events` show it.
    pub fn summary(&self) -> String {
        let verb = match self.outcome {
            Outcome::Deny => "Drift blocked",
            Outcome::Alert => "Drift detected",
            Outcome::Allow => "Exec allowed",
        };
        let mut line = format!(
            "{verb} ({class}): {path:?} in {ns}/{pod} container {ctr} image {img} \
             (rule={rule} action={action} pid={pid}",
            class = self.class,
            path = self.path,
            ns = self.namespace,
            pod = self.pod,
            ctr = self.container_name,
            img = self.image,
            rule = self.rule,
            action = action_str(self.action),
            pid = self.pid,
        );
        if let Some(p) = &self.parent {
            line.push_str(&format!(" ppid={}", p.pid));
            if let Some(exe) = &p.exe {
                line.push_str(&format!(" parent={exe:?}"));
            }
        }
        if let Some(h) = &self.hash {
            line.push_str(&format!(" blake3={h}"));
        }
        line.push(')');
        line
    }

    /// The Falco-compatible payload falcosidekick accepts on `POST /`.
    pub fn to_falco(&self, hostname: &str) -> Value {
        let fields = json!({
            "container.id": self.container_id,
            "container.name": self.container_name,
            "container.image": self.image,
            "k8s.pod.name": self.pod,
            "k8s.ns.name": self.namespace,
            "k8s.cluster.name": self.cluster,
            "proc.pid": self.pid,
            "proc.exepath": self.path,
            "proc.cmdline": self.argv.join(" "),
            "proc.ppid": self.parent.as_ref().map(|p| p.pid),
            "proc.pexepath": self.parent.as_ref().and_then(|p| p.exe.clone()),
            "driftguard.rule": self.rule,
            "driftguard.class": self.class.as_str(),
            "driftguard.outcome": outcome_str(self.outcome),
            "driftguard.action": action_str(self.action),
            "driftguard.allow_listed": self.allow_listed,
            "driftguard.exec_gate": self.exec_gate,
            "driftguard.hash": self.hash,
            "driftguard.node": self.node,
        });
        json!({
            "output": format!("{} {}", self.time, self.summary()),
            "priority": self.severity.falco_priority(),
            "rule": falco_rule(self.outcome),
            "time": self.time,
            "output_fields": fields,
            "source": "driftguard",
            "hostname": hostname,
            "tags": ["driftguard", "drift", self.class.as_str()],
        })
    }
}

/// The Falco rule name for an outcome.
fn falco_rule(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Deny => "Drift blocked",
        Outcome::Alert => "Drift detected",
        Outcome::Allow => "Exec allowed",
    }
}

/// The current time as RFC 3339 UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
