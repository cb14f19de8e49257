//! `driftguard policy …`: validate, show and change a policy file.
//!
//! Every verb that changes the file loads it, applies the change through the policy crate's
//! edit API, renders the result, checks that the rendered text parses back to the same policy,
//! and only then replaces the file atomically (keeping `FILE.bak`). A failed step leaves the
//! file untouched.
//!
//! Verbs other than `validate` work on `--file`, else on the `policyPath` of the daemon's
//! configuration (`$DRIFTGUARD_CONFIG`, else `/etc/driftguard/config.yaml` when it exists),
//! else on `/etc/driftguard/policy.yaml`.
//!
//! Limits: rewriting the file drops its comments (the YAML is regenerated from the policy); a
//! change that drops any says so on stderr and names the backup that still has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use driftguard_policy::edit::backup_path;
use driftguard_policy::rule::action_str;
use driftguard_policy::{
    write_atomic, Action, AllowEntry, Condition, FailurePolicy, Field, Move, Operator, Policy,
    Rule, RuleEdit, Scope, Treatment,
};

use crate::config::Config;

/// `driftguard policy` arguments.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

/// The policy file a verb works on.
#[derive(Debug, Args)]
struct FileArg {
    /// Policy file (default: `policyPath` of the daemon's configuration: $DRIFTGUARD_CONFIG,
    /// else /etc/driftguard/config.yaml when it exists; else /etc/driftguard/policy.yaml).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl FileArg {
    /// `--file`, else the configured policy path.
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let config = Config::resolve(None)
            .context("finding the policy file (hint: pass --file FILE to name it)")?;
        Ok(config.policy_path)
    }
}

/// Rule fields shared by `add` and `edit`.
#[derive(Debug, Args)]
struct RuleFields {
    /// Free-text description.
    #[arg(long)]
    description: Option<String>,
    /// Condition to add, as "FIELD OPERATOR VALUE" (e.g. "namespace equals shop"); repeatable.
    #[arg(long = "when", value_name = "FIELD OP VALUE")]
    when: Vec<String>,
    /// Allow-list entry to add: PATH or GLOB, optionally PATH@blake3:HEX; repeatable.
    #[arg(long = "allow", value_name = "PATH[@blake3:HEX]")]
    allow: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy file; prints one line per problem with file, line and column.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Write the default policy (kube-system alerts, everything else ignored).
    Init {
        #[command(flatten)]
        file: FileArg,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// List the rules in evaluation order.
    List {
        #[command(flatten)]
        file: FileArg,
    },
    /// Show one rule in full.
    Show {
        /// Rule name.
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
    /// Add a rule (above the default rule unless --position is given).
    Add {
        /// Rule name (unique).
        name: String,
        /// What the rule does with drift.
        #[arg(long, value_enum)]
        action: ActionArg,
        /// 1-based priority to insert at.
        #[arg(long)]
        position: Option<usize>,
        #[command(flatten)]
        fields: RuleFields,
        #[command(flatten)]
        file: FileArg,
    },
    /// Change fields of a rule (the default rule included, except its scope).
    Edit(EditArgs),
    /// Copy a rule under a new name, directly below the original.
    Duplicate {
        /// Rule to copy.
        name: String,
        /// Name of the copy.
        #[arg(long = "as")]
        new_name: String,
        #[command(flatten)]
        file: FileArg,
    },
    /// Delete a rule (not the default rule).
    Delete {
        /// Rule name.
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
    /// Change a rule's priority (not the default rule's).
    Move(MoveArgs),
    /// Show which rule applies to a container and why, condition by condition.
    Explain(ExplainArgs),
    /// Change the options next to the rules.
    Options(OptionsArgs),
}

#[derive(Debug, Args)]
struct EditArgs {
    /// Rule name.
    name: String,
    /// New name.
    #[arg(long)]
    rename: Option<String>,
    /// New action.
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    #[command(flatten)]
    fields: RuleFields,
    /// Remove every condition (before adding --when ones).
    #[arg(long)]
    clear_scope: bool,
    /// Condition to remove, as "FIELD OPERATOR VALUE"; repeatable.
    #[arg(long = "unwhen", value_name = "FIELD OP VALUE")]
    unwhen: Vec<String>,
    /// Remove every allow entry (before adding --allow ones).
    #[arg(long)]
    clear_allow: bool,
    /// Allow entry to remove, by path as written; repeatable.
    #[arg(long = "disallow", value_name = "PATH")]
    disallow: Vec<String>,
    #[command(flatten)]
    file: FileArg,
}

#[derive(Debug, Args)]
#[group(id = "where", required = true, multiple = false, args = ["to", "up", "down"])]
struct MoveArgs {
    /// Rule name.
    name: String,
    /// New 1-based priority.
    #[arg(long)]
    to: Option<usize>,
    /// One place up.
    #[arg(long)]
    up: bool,
    /// One place down.
    #[arg(long)]
    down: bool,
    #[command(flatten)]
    file: FileArg,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Pod namespace.
    #[arg(long, default_value = "")]
    namespace: String,
    /// Pod name.
    #[arg(long, default_value = "")]
    pod: String,
    /// Pod labels as k=v,k=v.
    #[arg(long, default_value = "")]
    labels: String,
    /// Container name.
    #[arg(long, default_value = "")]
    container: String,
    /// Image name.
    #[arg(long, default_value = "")]
    image: String,
    /// Cluster name.
    #[arg(long, default_value = "")]
    cluster: String,
    #[command(flatten)]
    file: FileArg,
}

#[derive(Debug, Args)]
struct OptionsArgs {
    /// Treatment of image content made executable after the fact.
    #[arg(long, value_enum)]
    mode_drift: Option<TreatmentArg>,
    /// Treatment of image content at a new path.
    #[arg(long, value_enum)]
    relocated_image_binaries: Option<TreatmentArg>,
    /// Treatment of new or modified files on volumes.
    #[arg(long, value_enum)]
    volume_files: Option<TreatmentArg>,
    /// Treatment of the image's dynamic loader run directly with an image program.
    #[arg(long, value_enum)]
    direct_loader: Option<TreatmentArg>,
    /// Behaviour when the supervisor cannot decide.
    #[arg(long, value_enum)]
    failure_policy: Option<FailureArg>,
    #[command(flatten)]
    file: FileArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActionArg {
    Block,
    Alert,
    Ignore,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Action {
        match a {
            ActionArg::Block => Action::Block,
            ActionArg::Alert => Action::Alert,
            ActionArg::Ignore => Action::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TreatmentArg {
    Allow,
    Alert,
    Block,
    Drift,
}

impl From<TreatmentArg> for Treatment {
    fn from(t: TreatmentArg) -> Treatment {
        match t {
            TreatmentArg::Allow => Treatment::Allow,
            TreatmentArg::Alert => Treatment::Alert,
            TreatmentArg::Block => Treatment::Block,
            TreatmentArg::Drift => Treatment::Drift,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FailureArg {
    Closed,
    Open,
}

/// Runs `driftguard policy …`.
pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Validate { file } => validate(&file),
        PolicyCommand::Init { file, force } => init(&file.path()?, force),
        PolicyCommand::List { file } => list(&load(&file.path()?)?),
        PolicyCommand::Show { name, file } => show(&load(&file.path()?)?, &name),
        PolicyCommand::Add {
            name,
            action,
            position,
            fields,
            file,
        } => add(&file.path()?, &name, action.into(), position, fields),
        PolicyCommand::Edit(args) => edit(args),
        PolicyCommand::Duplicate {
            name,
            new_name,
            file,
        } => change(&file.path()?, |p| {
            p.duplicate_rule(&name, &new_name)?;
            Ok(format!("rule `{new_name}` copied from `{name}`"))
        }),
        PolicyCommand::Delete { name, file } => change(&file.path()?, |p| {
            p.delete_rule(&name)?;
            Ok(format!("rule `{name}` deleted"))
        }),
        PolicyCommand::Move(args) => move_rule(args),
        PolicyCommand::Explain(args) => explain(args),
        PolicyCommand::Options(args) => options(args),
    }
}

/// Loads a policy; the error's own text is complete (file, line, cause), so its causes are not
/// repeated after it.
fn load(path: &Path) -> anyhow::Result<Policy> {
    Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    match Policy::load(path) {
        Ok(p) => {
            let rules = p.rules().len();
            let noun = if rules == 1 { "rule" } else { "rules" };
            println!(
                "{}: valid policy `{}` with {rules} {noun} above the default rule",
                path.display(),
                p.name(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn init(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        bail!(
            "{}: already exists (hint: pass --force to overwrite it)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: create", dir.display()))?;
    }
    save(path, &Policy::default_policy())?;
    println!("{}: default policy written", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Renders `policy`, checks the text parses back to the same policy, writes it atomically.
fn save(path: &Path, policy: &Policy) -> anyhow::Result<()> {
    let text = policy.to_yaml();
    let back = Policy::from_yaml(&text, &path.display().to_string())
        .context("rendered policy does not parse back; file left unchanged")?;
    if &back != policy {
        bail!(
            "{}: rendered policy differs from the edited one; file left unchanged",
            path.display()
        );
    }
    write_atomic(path, text.as_bytes()).with_context(|| {
        format!(
            "{}: cannot write policy; file left unchanged",
            path.display()
        )
    })
}

/// Loads, changes and saves the policy at `path`; `f` returns the message to print.
fn change(
    path: &Path,
    f: impl FnOnce(&mut Policy) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    let mut policy = load(path)?;
    let message = f(&mut policy)?;
    let comments = std::fs::read_to_string(path)
        .map(|text| comment_lines(&text))
        .unwrap_or(0);
    save(path, &policy)?;
    println!(
        "{message} (previous version kept as {})",
        backup_path(path).display()
    );
    if comments > 0 {
        eprintln!(
            "note: the {comments} comment line(s) of {} are not kept; {} has them until the next change",
            path.display(),
            backup_path(path).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Comment lines a rewrite drops: every `#` line but the header the rendering writes itself.
fn comment_lines(text: &str) -> usize {
    text.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('#') && *line != driftguard_policy::RENDERED_HEADER)
        .count()
}

fn parse_condition(text: &str) -> anyhow::Result<Condition> {
    let mut parts = text.trim().splitn(3, char::is_whitespace);
    let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        bail!(
            "condition `{text}` is not FIELD OPERATOR VALUE (hint: e.g. \"namespace equals shop\")"
        );
    };
    let field = Field::parse(field)?;
    let op = Operator::parse(op)?;
    Ok(Condition::new(field, op, value.trim())?)
}

fn parse_allow(text: &str) -> anyhow::Result<AllowEntry> {
    Ok(match text.rsplit_once("@blake3:") {
        Some((path, hash)) => AllowEntry::new(path, Some(hash))?,
        None => AllowEntry::new(text, None)?,
    })
}

fn add(
    path: &Path,
    name: &str,
    action: Action,
    position: Option<usize>,
    fields: RuleFields,
) -> anyhow::Result<ExitCode> {
    let mut rule = Rule::new(name, action);
    rule.description = fields.description.unwrap_or_default();
    rule.conditions = fields
        .when
        .iter()
        .map(|c| parse_condition(c))
        .collect::<Result<_, _>>()?;
    rule.allow = fields
        .allow
        .iter()
        .map(|a| parse_allow(a))
        .collect::<Result<_, _>>()?;
    change(path, |p| {
        p.add_rule(rule, position)?;
        let pos = p.position(name).unwrap_or_default();
        Ok(format!("rule `{name}` added at position {pos}"))
    })
}

fn edit(args: EditArgs) -> anyhow::Result<ExitCode> {
    let edit = RuleEdit {
        rename: args.rename,
        description: args.fields.description,
        action: args.action.map(Action::from),
        clear_scope: args.clear_scope,
        add_conditions: args
            .fields
            .when
            .iter()
            .map(|c| parse_condition(c))
            .collect::<Result<_, _>>()?,
        remove_conditions: args
            .unwhen
            .iter()
            .map(|c| parse_condition(c).map(|c| c.to_string()))
            .collect::<Result<_, _>>()?,
        clear_allow: args.clear_allow,
        add_allow: args
            .fields
            .allow
            .iter()
            .map(|a| parse_allow(a))
            .collect::<Result<_, _>>()?,
        remove_allow: args.disallow,
    };
    let name = args.name;
    change(&args.file.path()?, |p| {
        p.edit_rule(&name, edit)?;
        Ok(format!("rule `{name}` updated"))
    })
}

fn move_rule(args: MoveArgs) -> anyhow::Result<ExitCode> {
    let to = match (args.to, args.up, args.down) {
        (Some(n), _, _) => Move::To(n),
        (None, true, _) => Move::Up,
        (None, false, true) => Move::Down,
        (None, false, false) => bail!("give --to N, --up or --down"),
    };
    let name = args.name;
    change(&args.file.path()?, |p| {
        let pos = p.move_rule(&name, to)?;
        Ok(format!("rule `{name}` now at position {pos}"))
    })
}

fn options(args: OptionsArgs) -> anyhow::Result<ExitCode> {
    change(&args.file.path()?, |p| {
        let mut o = p.options();
        if let Some(t) = args.mode_drift {
            o.mode_drift = t.into();
        }
        if let Some(t) = args.relocated_image_binaries {
            o.relocated_image_binaries = t.into();
        }
        if let Some(t) = args.volume_files {
            o.volume_files = t.into();
        }
        if let Some(t) = args.direct_loader {
            o.direct_loader = t.into();
        }
        if let Some(f) = args.failure_policy {
            o.failure_policy = match f {
                FailureArg::Closed => FailurePolicy::Closed,
                FailureArg::Open => FailurePolicy::Open,
            };
        }
        p.set_options(o);
        Ok("options updated".to_string())
    })
}

fn scope_text(rule: &Rule, is_default: bool) -> String {
    if is_default {
        return "(when nothing above matches)".into();
    }
    if rule.conditions.is_empty() {
        return "(every container)".into();
    }
    rule.conditions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

fn allow_text(rule: &Rule) -> String {
    if rule.allow.is_empty() {
        return "-".into();
    }
    rule.allow
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(policy: &Policy) -> anyhow::Result<ExitCode> {
    let count = policy.rules().len() + 1;
    let rows: Vec<[String; 5]> = policy
        .all_rules()
        .enumerate()
        .map(|(i, r)| {
            let is_default = i + 1 == count;
            let prio = if is_default {
                "default".to_string()
            } else {
                (i + 1).to_string()
            };
            [
                prio,
                r.name.clone(),
                action_str(r.action).into(),
                scope_text(r, is_default),
                allow_text(r),
            ]
        })
        .collect();
    let header = ["PRIORITY", "NAME", "ACTION", "SCOPE", "ALLOW"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("\noptions: {}", policy.options());
    Ok(ExitCode::SUCCESS)
}

fn show(policy: &Policy, name: &str) -> anyhow::Result<ExitCode> {
    let Some(rule) = policy.rule(name) else {
        bail!("no rule named `{name}` (hint: `driftguard policy list` shows the rule names)");
    };
    let is_default = policy.default_rule().name == name;
    let prio = policy
        .position(name)
        .map_or("default".into(), |p| p.to_string());
    println!("name:        {}", rule.name);
    println!("priority:    {prio}");
    println!("action:      {}", action_str(rule.action));
    println!("description: {}", rule.description);
    if rule.conditions.is_empty() {
        println!("scope:       {}", scope_text(rule, is_default));
    } else {
        println!("scope:       all of");
    }
    for c in &rule.conditions {
        println!("  - {c}");
    }
    println!(
        "allow:       {}",
        if rule.allow.is_empty() {
            "-"
        } else {
            "these processes"
        }
    );
    for a in &rule.allow {
        match a.hash() {
            Some(h) => println!("  - {} (blake3 {})", a.path(), hex_string(h)),
            None => println!("  - {}", a.path()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_string(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("label `{pair}` is not key=value (hint: --labels app=web,tier=front)");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let policy = load(&args.file.path()?)?;
    let scope = Scope {
        cluster: args.cluster,
        namespace: args.namespace,
        pod_name: args.pod,
        pod_uid: String::new(),
        pod_labels: parse_labels(&args.labels)?,
        container_name: args.container,
        image_name: args.image,
    };
    let explanation = policy.explain(&scope);
    for trace in &explanation.rules {
        let verdict = if trace.matched { "MATCH" } else { "no match" };
        println!(
            "rule `{}` ({}): {verdict}",
            trace.name,
            action_str(trace.action)
        );
        if trace.conditions.is_empty() {
            let why = if explanation.matched_default && trace.matched {
                "no rule above matched; the default rule applies"
            } else {
                "empty scope: matches every container"
            };
            println!("  {why}");
        }
        for c in &trace.conditions {
            let mark = if c.holds { "holds" } else { "fails" };
            println!("  [{mark}] {}  (observed: {:?})", c.condition, c.observed);
        }
    }
    let m = explanation.matched();
    println!(
        "=> rule `{}` applies: action {}",
        m.name,
        action_str(m.action)
    );
    Ok(ExitCode::SUCCESS)
}
