//! Rules and their parts: conditions on a [`Scope`], allow-list entries, actions.
//!
//! Every type here is validated on construction: a [`Condition`] has a non-empty value and, for
//! the `glob` operator, a compiled pattern; an [`AllowEntry`] has an absolute path or glob and,
//! when pinned, a 32-byte BLAKE3 hash. Matching never allocates except for `podLabels`
//! conditions, which test each label rendered as `key=value`.
//!
//! Limits: string comparisons are exact and case-sensitive (Kubernetes names are lower-case by
//! rule; image names are compared as written in the pod spec, so `nginx` and
//! `docker.io/library/nginx` are different values).

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

use crate::scope::{Action, Scope};

/// A validation failure without a location; the caller attaches file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Invalid {
    pub(crate) fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Invalid {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// The part of a [`Scope`] a condition tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The cluster name from the daemon's configuration.
    Cluster,
    /// The pod's namespace.
    Namespace,
    /// The pod's name.
    PodName,
    /// The pod's labels, each tested as `key=value`; the condition holds when any label does.
    PodLabels,
    /// The container's name.
    ContainerName,
    /// The image name the container was created from.
    ImageName,
}

impl Field {
    /// Every field, in documentation order.
    pub const ALL: [Field; 6] = [
        Field::Cluster,
        Field::Namespace,
        Field::PodName,
        Field::PodLabels,
        Field::ContainerName,
        Field::ImageName,
    ];

    /// The field's name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Cluster => "cluster",
            Field::Namespace => "namespace",
            Field::PodName => "podName",
            Field::PodLabels => "podLabels",
            Field::ContainerName => "containerName",
            Field::ImageName => "imageName",
        }
    }

    /// Parses a field name as written in policy files.
    pub fn parse(name: &str) -> Result<Field, Invalid> {
        Field::ALL
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| {
                Invalid::new(
                    format!("unknown condition field `{name}`"),
                    format!("use one of {}", names(Field::ALL.map(Field::as_str))),
                )
            })
    }

    /// The scope's value for this field; `None` for `podLabels` (tested label by label).
    fn value(self, scope: &Scope) -> Option<&str> {
        match self {
            Field::Cluster => Some(&scope.cluster),
            Field::Namespace => Some(&scope.namespace),
            Field::PodName => Some(&scope.pod_name),
            Field::PodLabels => None,
            Field::ContainerName => Some(&scope.container_name),
            Field::ImageName => Some(&scope.image_name),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a condition compares the scope's value with its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The whole value is equal.
    Equals,
    /// The value starts with the condition's value.
    StartsWith,
    /// The value ends with the condition's value.
    EndsWith,
    /// The value contains the condition's value.
    Contains,
    /// The whole value matches a shell-style glob (`*`, `?`, `[abc]`, `{a,b}`).
    Glob,
}

impl Operator {
    /// Every operator, in documentation order.
    pub const ALL: [Operator; 5] = [
        Operator::Equals,
        Operator::StartsWith,
        Operator::EndsWith,
        Operator::Contains,
        Operator::Glob,
    ];

    /// The operator's name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::StartsWith => "startsWith",
            Operator::EndsWith => "endsWith",
            Operator::Contains => "contains",
            Operator::Glob => "glob",
        }
    }

    /// Parses an operator name as written in policy files.
    pub fn parse(name: &str) -> Result<Operator, Invalid> {
        Operator::ALL
            .into_iter()
            .find(|o| o.as_str() == name)
            .ok_or_else(|| {
                Invalid::new(
                    format!("unknown operator `{name}`"),
                    format!("use one of {}", names(Operator::ALL.map(Operator::as_str))),
                )
            })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One test on a scope: `field operator value`.
#[derive(Debug, Clone)]
pub struct Condition {
    field: Field,
    operator: Operator,
    value: String,
    glob: Option<GlobMatcher>,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        (self.field, self.operator, &self.value) == (other.field, other.operator, &other.value)
    }
}

impl Condition {
    /// Builds a condition; the value must be non-empty, a `podLabels` value compared with
    /// `equals` must be `key=value`, and a `glob` value must compile.
    pub fn new(field: Field, operator: Operator, value: &str) -> Result<Condition, Invalid> {
        if value.is_empty() {
            return Err(Invalid::new(
                format!("empty value for condition on `{field}`"),
                "give a non-empty value; an empty scope (no conditions) matches everything",
            ));
        }
        if field == Field::PodLabels && operator == Operator::Equals && !value.contains('=') {
            return Err(Invalid::new(
                format!("podLabels value `{value}` is not `key=value`"),
                "write the label as key=value, e.g. app=web",
            ));
        }
        let glob = match operator {
            Operator::Glob => Some(compile_glob(value, false)?),
            _ => None,
        };
        Ok(Condition {
            field,
            operator,
            value: value.to_string(),
            glob,
        })
    }

    /// The field tested.
    pub fn field(&self) -> Field {
        self.field
    }

    /// The comparison.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The value compared against.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the condition holds for `scope`.
    pub fn matches(&self, scope: &Scope) -> bool {
        match self.field.value(scope) {
            Some(v) => self.test(v),
            None => scope
                .pod_labels
                .iter()
                .any(|(k, v)| self.test(&format!("{k}={v}"))),
        }
    }

    /// What the scope has for this condition's field, as `explain` shows it.
    pub fn observed(&self, scope: &Scope) -> String {
        match self.field.value(scope) {
            Some(v) => v.to_string(),
            None => scope
                .pod_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn test(&self, candidate: &str) -> bool {
        let value = self.value.as_str();
        match self.operator {
            Operator::Equals => candidate == value,
            Operator::StartsWith => candidate.starts_with(value),
            Operator::EndsWith => candidate.ends_with(value),
            Operator::Contains => candidate.contains(value),
            Operator::Glob => self.glob.as_ref().is_some_and(|g| g.is_match(candidate)),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.field, self.operator, self.value)
    }
}

/// A process exempt from drift under one rule: a path or glob, optionally pinned to a hash.
#[derive(Debug, Clone)]
pub struct AllowEntry {
    path: String,
    glob: Option<GlobMatcher>,
    hash: Option<[u8; 32]>,
}

impl PartialEq for AllowEntry {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, self.hash) == (&other.path, other.hash)
    }
}

impl AllowEntry {
    /// Builds an entry. `path` is absolute: an exact path, or a glob in which `*` stays within
    /// one path component and `**` spans several. `hash` is 64 hex digits (BLAKE3).
    pub fn new(path: &str, hash: Option<&str>) -> Result<AllowEntry, Invalid> {
        if !path.starts_with('/') {
            return Err(Invalid::new(
                format!("allow-list path `{path}` is not absolute"),
                "give the path inside the container starting with /, e.g. /usr/local/bin/tool",
            ));
        }
        let glob = if path.contains(['*', '?', '[', '{']) {
            Some(compile_glob(path, true)?)
        } else {
            None
        };
        let hash = hash.map(parse_hash).transpose()?;
        Ok(AllowEntry {
            path: path.to_string(),
            glob,
            hash,
        })
    }

    /// The path or glob as written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The pinned BLAKE3 hash, if any.
    pub fn hash(&self) -> Option<[u8; 32]> {
        self.hash
    }

    /// Whether the exec of `path` with content `hash` is exempt. An entry pinned to a hash never
    /// matches an exec whose hash is unknown.
    pub fn matches(&self, path: &str, hash: Option<[u8; 32]>) -> bool {
        let path_ok = match &self.glob {
            Some(g) => g.is_match(path),
            None => self.path == path,
        };
        path_ok && self.hash.is_none_or(|pinned| hash == Some(pinned))
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(h) = self.hash {
            write!(f, "@blake3:{}", &hex::encode(h)[..12])?;
        }
        Ok(())
    }
}

/// One rule: which containers it covers, what it does with drift, which processes it exempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name within the policy.
    pub name: String,
    /// Free text for operators.
    pub description: String,
    /// What the rule does with drift.
    pub action: Action,
    /// Conditions that must all hold; empty matches every container.
    pub conditions: Vec<Condition>,
    /// Processes never treated as drift under this rule.
    pub allow: Vec<AllowEntry>,
}

impl Rule {
    /// A rule with an empty scope and allow list.
    pub fn new(name: &str, action: Action) -> Rule {
        Rule {
            name: name.to_string(),
            description: String::new(),
            action,
            conditions: Vec::new(),
            allow: Vec::new(),
        }
    }

    /// Whether every condition holds for `scope`.
    pub fn matches(&self, scope: &Scope) -> bool {
        self.conditions.iter().all(|c| c.matches(scope))
    }

    /// Whether the allow list exempts the exec of `path` with content `hash`.
    pub fn allows(&self, path: &str, hash: Option<[u8; 32]>) -> bool {
        self.allow.iter().any(|e| e.matches(path, hash))
    }
}

/// Parses an action name as written in policy files.
pub fn parse_action(name: &str) -> Result<Action, Invalid> {
    match name {
        "block" => Ok(Action::Block),
        "alert" => Ok(Action::Alert),
        "ignore" => Ok(Action::Ignore),
        other => Err(Invalid::new(
            format!("unknown action `{other}`"),
            "use one of block, alert, ignore",
        )),
    }
}

/// An action's name as written in policy files.
pub fn action_str(action: Action) -> &'static str {
    match action {
        Action::Block => "block",
        Action::Alert => "alert",
        Action::Ignore => "ignore",
    }
}

/// Checks a rule name: non-empty, at most 63 characters of `[A-Za-z0-9._-]`.
pub fn check_rule_name(name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 63 || !ok_chars {
        return Err(Invalid::new(
            format!("invalid rule name `{name}`"),
            "use 1 to 63 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

fn parse_hash(hex_str: &str) -> Result<[u8; 32], Invalid> {
    let digits = hex_str.strip_prefix("blake3:").unwrap_or(hex_str);
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).map_err(|_| {
        Invalid::new(
            format!("invalid hash `{hex_str}`"),
            "give the file's BLAKE3 hash as 64 hex digits (b3sum FILE)",
        )
    })?;
    Ok(out)
}

fn compile_glob(pattern: &str, path_like: bool) -> Result<GlobMatcher, Invalid> {
    GlobBuilder::new(pattern)
        .literal_separator(path_like)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| {
            Invalid::new(
                format!("invalid glob `{pattern}`: {}", e.kind()),
                "use *, ?, [abc] and {a,b}; escape a literal with a backslash",
            )
        })
}

fn names<const N: usize>(all: [&str; N]) -> String {
    all.join(", ")
}
