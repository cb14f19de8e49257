//! The policy file: a Kubernetes-style YAML document (`apiVersion: driftguard.dev/v1`,
//! `kind: DriftPolicy`, `spec`), so the same text can live in a ConfigMap now and a custom
//! resource later.
//!
//! Parsing is strict: unknown fields, unknown fields' values (operators, actions, treatments),
//! duplicate rule names, empty values and a scope on the default rule are errors. Every error
//! is one line, `FILE:LINE:COLUMN: what is wrong (hint: how to fix it)`.
//!
//! Limits: writing a policy back ([`Policy::to_yaml`]) does not keep comments or key order of
//! the original file; a file edited through the CLI loses its comments.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::policy::{Options, Policy, Treatment, DEFAULT_RULE_NAME};
use crate::rule::{
    action_str, check_rule_name, parse_action, AllowEntry, Condition, Field, Invalid, Operator,
    Rule,
};
use crate::verdict::FailurePolicy;

/// The `apiVersion` of policy documents.
pub const API_VERSION: &str = "driftguard.dev/v1";
/// The `kind` of policy documents.
pub const KIND: &str = "DriftPolicy";
/// The comment line [`Policy::to_yaml`] starts its output with.
pub const RENDERED_HEADER: &str = "# driftguard drift policy (see docs/policy.md)";

/// Where the daemon reads its policy unless configured otherwise.
pub const DEFAULT_POLICY_PATH: &str = "/etc/driftguard/policy.yaml";

/// Why a policy could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: cannot read policy: {source}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not valid YAML or not a valid policy.
    #[error("{}", Located { origin, line: *line, column: *column, invalid })]
    Invalid {
        /// The file name (or other origin) the text came from.
        origin: String,
        /// 1-based line; 0 when unknown.
        line: u32,
        /// 1-based column; 0 when unknown.
        column: u32,
        /// What is wrong and how to fix it.
        invalid: Invalid,
    },
}

impl PolicyError {
    fn at(origin: &str, loc: Location, invalid: Invalid) -> PolicyError {
        PolicyError::Invalid {
            origin: origin.to_string(),
            line: loc.line() as u32,
            column: loc.column() as u32,
            invalid,
        }
    }

    /// Line and column (1-based) of an invalid document, when known.
    pub fn location(&self) -> Option<(u32, u32)> {
        match self {
            PolicyError::Invalid { line, column, .. } if *line > 0 => Some((*line, *column)),
            _ => None,
        }
    }
}

struct Located<'a> {
    origin: &'a str,
    line: u32,
    column: u32,
    invalid: &'a Invalid,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.origin, self.line, self.column, self.invalid
            )
        } else {
            write!(f, "{}: {}", self.origin, self.invalid)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDoc {
    api_version: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    metadata: Metadata,
    spec: RawSpec,
}

/// `metadata` of a policy document, kept so a rewritten file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    failure_policy: Option<Spanned<String>>,
    mode_drift: Option<Spanned<String>>,
    relocated_image_binaries: Option<Spanned<String>>,
    volume_files: Option<Spanned<String>>,
    direct_loader: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<RawRule>,
    default_rule: Spanned<RawDefaultRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    action: Spanned<String>,
    #[serde(default)]
    scope: Vec<RawCondition>,
    #[serde(default)]
    allow: Vec<RawAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultRule {
    name: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    action: Spanned<String>,
    scope: Option<Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    allow: Vec<RawAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    field: Spanned<String>,
    operator: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    path: Spanned<String>,
    hash: Option<Spanned<String>>,
}

impl Policy {
    /// Parses and validates a policy document; `origin` names the source in error messages.
    pub fn from_yaml(src: &str, origin: &str) -> Result<Policy, PolicyError> {
        let raw: RawDoc = serde_saphyr::from_str(src).map_err(|e| yaml_error(src, origin, &e))?;
        let checked = |s: &Spanned<String>, want: &str, what: &str| {
            if s.value == want {
                Ok(())
            } else {
                Err(PolicyError::at(
                    origin,
                    s.referenced,
                    Invalid::new(
                        format!("unsupported {what} `{}`", s.value),
                        format!("use {want}"),
                    ),
                ))
            }
        };
        checked(&raw.api_version, API_VERSION, "apiVersion")?;
        checked(&raw.kind, KIND, "kind")?;
        build(raw, origin)
    }

    /// Reads and validates a policy file; a file that is not UTF-8 text is refused with the
    /// offset and line of its first bad byte.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let read_error = |source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_error)?;
        let src = String::from_utf8(bytes).map_err(|err| read_error(not_utf8(&err)))?;
        Policy::from_yaml(&src, &path.display().to_string())
    }

    /// Renders the policy as a YAML document that [`Policy::from_yaml`] accepts.
    pub fn to_yaml(&self) -> String {
        let doc = OutDoc::from(self);
        let body = serde_saphyr::to_string(&doc).unwrap_or_else(|e| format!("# unrenderable: {e}"));
        format!("{RENDERED_HEADER}\n{body}")
    }
}

/// Where the first byte that is not UTF-8 sits (used by [`Policy::load`] and the watcher).
pub(crate) fn not_utf8(err: &std::string::FromUtf8Error) -> std::io::Error {
    let at = err.utf8_error().valid_up_to();
    let line = 1 + err.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not UTF-8 text: invalid byte at offset {at} (line {line})"),
    )
}

/// The error for a second document, located at the `---` line that starts it (the parser
/// points at its first node, below any comments).
fn second_document(src: &str, origin: &str, loc: Location) -> PolicyError {
    let first_node = usize::try_from(loc.line()).unwrap_or(usize::MAX);
    let marker = src
        .lines()
        .enumerate()
        .take(first_node)
        .filter(|(_, l)| *l == "---" || l.starts_with("--- ") || l.starts_with("---\t"))
        .map(|(i, _)| i + 1)
        .last()
        // A `---` that opens the first document (then `...` ended it) is not the one.
        .filter(|&m| m > first_content_line(src));
    let (line, column) = marker.map_or((loc.line(), loc.column()), |m| (m as u64, 1));
    PolicyError::Invalid {
        origin: origin.to_string(),
        line: line as u32,
        column: column as u32,
        invalid: Invalid::new(
            format!(
                "the file has more than one YAML document (line {line}); a policy is one document"
            ),
            "keep one policy; remove this `---` line and the document after it",
        ),
    }
}

/// 1-based line of the first line that is neither blank nor a comment.
fn first_content_line(src: &str) -> usize {
    src.lines()
        .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map_or(0, |i| i + 1)
}

fn yaml_error(src: &str, origin: &str, err: &serde_saphyr::Error) -> PolicyError {
    let plain = err.without_snippet();
    let loc = plain.location().unwrap_or(Location::UNKNOWN);
    let rendered = plain.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
    });
    // The plain rendering ends with " at line L column C"; the location is printed up front.
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid document")
        .split(" at line ")
        .next()
        .unwrap_or("invalid document")
        .to_string();
    if matches!(plain, serde_saphyr::Error::MultipleDocuments { .. }) {
        return second_document(src, origin, loc);
    }
    let message = if message.contains("null into string") {
        "missing value (the YAML value is empty or null)".to_string()
    } else if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        format!("duplicate key `{}`", rest.split(',').next().unwrap_or(rest))
    } else {
        message
    };
    let hint = if message.contains("unknown field") {
        "remove the field or fix its spelling; docs/policy.md lists every field"
    } else if message.contains("missing field") {
        "add the required field; docs/policy.md lists every field"
    } else if message.starts_with("missing value") {
        "give a value, quoted if it could be read as something else"
    } else if message.starts_with("duplicate key") {
        "each key may appear once per mapping; remove one"
    } else {
        "check the YAML syntax (indentation, colons, quoting) near this position"
    };
    PolicyError::at(origin, loc, Invalid::new(message, hint))
}

fn build(raw: RawDoc, origin: &str) -> Result<Policy, PolicyError> {
    let spec = raw.spec;
    let options = build_options(&spec, origin)?;
    let mut names = HashMap::new();
    let mut rules = Vec::with_capacity(spec.rules.len());
    for raw_rule in spec.rules {
        let rule = build_rule(raw_rule, origin, &mut names)?;
        rules.push(rule);
    }
    let default_rule = build_default_rule(spec.default_rule, origin, &mut names)?;
    Ok(Policy {
        metadata: raw.metadata,
        rules,
        default_rule,
        options,
    })
}

fn build_options(spec: &RawSpec, origin: &str) -> Result<Options, PolicyError> {
    let mut options = Options::default();
    let treatment =
        |s: &Option<Spanned<String>>, slot: &mut Treatment| -> Result<(), PolicyError> {
            if let Some(s) = s {
                *slot = Treatment::parse(&s.value)
                    .map_err(|e| PolicyError::at(origin, s.referenced, e))?;
            }
            Ok(())
        };
    treatment(&spec.mode_drift, &mut options.mode_drift)?;
    treatment(
        &spec.relocated_image_binaries,
        &mut options.relocated_image_binaries,
    )?;
    treatment(&spec.volume_files, &mut options.volume_files)?;
    treatment(&spec.direct_loader, &mut options.direct_loader)?;
    if let Some(fp) = &spec.failure_policy {
        options.failure_policy = match fp.value.as_str() {
            "closed" => FailurePolicy::Closed,
            "open" => FailurePolicy::Open,
            other => {
                let invalid = Invalid::new(
                    format!("unknown failurePolicy `{other}`"),
                    "use closed (deny when undecided) or open (allow and alert)",
                );
                return Err(PolicyError::at(origin, fp.referenced, invalid));
            }
        };
    }
    Ok(options)
}

fn unique_name(
    name: &Spanned<String>,
    origin: &str,
    names: &mut HashMap<String, Location>,
) -> Result<(), PolicyError> {
    check_rule_name(&name.value).map_err(|e| PolicyError::at(origin, name.referenced, e))?;
    if let Some(first) = names.insert(name.value.clone(), name.referenced) {
        let invalid = Invalid::new(
            format!("duplicate rule name `{}`", name.value),
            format!(
                "rule names must be unique; the first `{}` is at line {}, rename one of them",
                name.value,
                first.line()
            ),
        );
        return Err(PolicyError::at(origin, name.referenced, invalid));
    }
    Ok(())
}

fn build_rule(
    raw: RawRule,
    origin: &str,
    names: &mut HashMap<String, Location>,
) -> Result<Rule, PolicyError> {
    unique_name(&raw.name, origin, names)?;
    let action = parse_action(&raw.action.value)
        .map_err(|e| PolicyError::at(origin, raw.action.referenced, e))?;
    let mut conditions = Vec::with_capacity(raw.scope.len());
    for c in raw.scope {
        let field = Field::parse(&c.field.value)
            .map_err(|e| PolicyError::at(origin, c.field.referenced, e))?;
        let op = Operator::parse(&c.operator.value)
            .map_err(|e| PolicyError::at(origin, c.operator.referenced, e))?;
        let cond = Condition::new(field, op, &c.value.value)
            .map_err(|e| PolicyError::at(origin, c.value.referenced, e))?;
        conditions.push(cond);
    }
    Ok(Rule {
        name: raw.name.value,
        description: raw.description,
        action,
        conditions,
        allow: build_allow(raw.allow, origin)?,
    })
}

fn build_default_rule(
    raw: Spanned<RawDefaultRule>,
    origin: &str,
    names: &mut HashMap<String, Location>,
) -> Result<Rule, PolicyError> {
    let at = raw.referenced;
    let raw = raw.value;
    if let Some(scope) = &raw.scope {
        let invalid = Invalid::new(
            "the default rule cannot have a scope",
            "remove `scope` from defaultRule; add a rule above it to cover specific containers",
        );
        return Err(PolicyError::at(origin, scope.referenced, invalid));
    }
    let name = raw
        .name
        .unwrap_or_else(|| Spanned::new(DEFAULT_RULE_NAME.to_string(), at, at));
    unique_name(&name, origin, names)?;
    let action = parse_action(&raw.action.value)
        .map_err(|e| PolicyError::at(origin, raw.action.referenced, e))?;
    Ok(Rule {
        name: name.value,
        description: raw.description,
        action,
        conditions: Vec::new(),
        allow: build_allow(raw.allow, origin)?,
    })
}

fn build_allow(raw: Vec<RawAllow>, origin: &str) -> Result<Vec<AllowEntry>, PolicyError> {
    raw.into_iter()
        .map(|a| {
            let at = a.hash.as_ref().map_or(a.path.referenced, |h| h.referenced);
            AllowEntry::new(&a.path.value, a.hash.as_ref().map(|h| h.value.as_str())).map_err(|e| {
                let loc = if e.message.contains("hash") {
                    at
                } else {
                    a.path.referenced
                };
                PolicyError::at(origin, loc, e)
            })
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutDoc {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: OutSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutSpec {
    failure_policy: &'static str,
    mode_drift: &'static str,
    relocated_image_binaries: &'static str,
    volume_files: &'static str,
    direct_loader: &'static str,
    rules: Vec<OutRule>,
    default_rule: OutRule,
}

#[derive(Serialize)]
struct OutRule {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Vec<OutCondition>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow: Vec<OutAllow>,
}

#[derive(Serialize)]
struct OutCondition {
    field: &'static str,
    operator: &'static str,
    value: String,
}

#[derive(Serialize)]
struct OutAllow {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
}

impl OutRule {
    fn from_rule(rule: &Rule, with_scope: bool) -> OutRule {
        let scope = rule
            .conditions
            .iter()
            .map(|c| OutCondition {
                field: c.field().as_str(),
                operator: c.operator().as_str(),
                value: c.value().to_string(),
            })
            .collect();
        OutRule {
            name: rule.name.clone(),
            description: rule.description.clone(),
            action: action_str(rule.action),
            scope: with_scope.then_some(scope),
            allow: rule
                .allow
                .iter()
                .map(|a| OutAllow {
                    path: a.path().to_string(),
                    hash: a.hash().map(hex::encode),
                })
                .collect(),
        }
    }
}

impl From<&Policy> for OutDoc {
    fn from(p: &Policy) -> OutDoc {
        let o = p.options;
        OutDoc {
            api_version: API_VERSION,
            kind: KIND,
            metadata: p.metadata.clone(),
            spec: OutSpec {
                failure_policy: match o.failure_policy {
                    FailurePolicy::Closed => "closed",
                    FailurePolicy::Open => "open",
                },
                mode_drift: o.mode_drift.as_str(),
                relocated_image_binaries: o.relocated_image_binaries.as_str(),
                volume_files: o.volume_files.as_str(),
                direct_loader: o.direct_loader.as_str(),
                rules: p
                    .rules
                    .iter()
                    .map(|r| OutRule::from_rule(r, true))
                    .collect(),
                default_rule: OutRule::from_rule(&p.default_rule, false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_document_is_located_at_its_marker() {
        let doc = Policy::default_policy().to_yaml();
        let lines = doc.lines().count();
        for (text, line) in [
            (format!("{doc}---\n{doc}"), lines + 1),
            (format!("---\n{doc}--- # again\n{doc}"), lines + 2),
        ] {
            let err = Policy::from_yaml(&text, "p.yaml").unwrap_err().to_string();
            let want = format!(
                "p.yaml:{line}:1: the file has more than one YAML document (line {line}); a \
                 policy is one document"
            );
            assert!(err.starts_with(&want), "{err}");
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, b"kind: x\n\xc3(\n").unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(err.contains("offset 8 (line 2)"), "{err}");
    }
}
