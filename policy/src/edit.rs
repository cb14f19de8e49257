//! Changing a policy: add, edit, duplicate, delete and move rules, and write the result back
//! atomically.
//!
//! Positions are 1-based priorities as `driftguard policy list` shows them; the default rule
//! is always last, may be edited (action, description, allow list, name) but never deleted,
//! moved or given a scope. Every operation keeps the invariants of [`Policy`]: after an edit
//! the policy is still valid, and callers re-parse the rendered text before writing it.
//!
//! [`write_atomic`] writes a temporary file in the target's directory, fsyncs it, keeps the
//! previous version as `FILE.bak`, renames the temporary file over the target and fsyncs the
//! directory; on any failure the target is left as it was.
//!
//! Limits: there is no locking between concurrent editors; the last rename wins.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::policy::{Options, Policy};
use crate::rule::{check_rule_name, AllowEntry, Condition, Invalid, Rule};
use crate::scope::Action;

/// Why an edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No rule has that name.
    #[error("no rule named `{0}` (hint: `driftguard policy list` shows the rule names)")]
    NotFound(String),
    /// The name is taken.
    #[error("a rule named `{0}` already exists (hint: rule names must be unique)")]
    Exists(String),
    /// The default rule cannot undergo this operation.
    #[error(
        "the default rule cannot be {0} (hint: it always applies last, when nothing else matches)"
    )]
    DefaultRule(&'static str),
    /// A position outside the rule list.
    #[error("position {pos} is out of range (hint: use 1 to {max})")]
    Position {
        /// The requested position.
        pos: usize,
        /// The largest valid position.
        max: usize,
    },
    /// A field value is invalid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Where to move a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// To a 1-based position among the non-default rules.
    To(usize),
    /// One place towards the top (higher priority).
    Up,
    /// One place towards the default rule.
    Down,
}

/// Changes to one rule; `None` and empty lists leave a part as it is.
#[derive(Debug, Clone, Default)]
pub struct RuleEdit {
    /// New name.
    pub rename: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New action.
    pub action: Option<Action>,
    /// Remove every condition before adding.
    pub clear_scope: bool,
    /// Conditions to add.
    pub add_conditions: Vec<Condition>,
    /// Conditions to remove, as `field operator value` text.
    pub remove_conditions: Vec<String>,
    /// Remove every allow entry before adding.
    pub clear_allow: bool,
    /// Allow entries to add.
    pub add_allow: Vec<AllowEntry>,
    /// Allow entries to remove, by path as written.
    pub remove_allow: Vec<String>,
}

impl Policy {
    /// Inserts `rule` at 1-based `position`, or directly above the default rule.
    pub fn add_rule(&mut self, rule: Rule, position: Option<usize>) -> Result<(), EditError> {
        check_rule_name(&rule.name)?;
        if self.rule(&rule.name).is_some() {
            return Err(EditError::Exists(rule.name));
        }
        let max = self.rules.len() + 1;
        let pos = position.unwrap_or(max);
        if pos == 0 || pos > max {
            return Err(EditError::Position { pos, max });
        }
        self.rules.insert(pos - 1, rule);
        Ok(())
    }

    /// Applies `edit` to the rule called `name` (the default rule included).
    pub fn edit_rule(&mut self, name: &str, edit: RuleEdit) -> Result<(), EditError> {
        if let Some(new) = &edit.rename {
            check_rule_name(new)?;
            if new != name && self.rule(new).is_some() {
                return Err(EditError::Exists(new.clone()));
            }
        }
        let is_default = self.default_rule.name == name;
        let touches_scope = edit.clear_scope
            || !edit.add_conditions.is_empty()
            || !edit.remove_conditions.is_empty();
        if is_default && touches_scope {
            return Err(EditError::DefaultRule("given a scope"));
        }
        let rule = self.rule_mut(name)?;
        apply_edit(rule, edit)
    }

    /// Copies the rule called `name` under `new_name`, directly below the original (or above
    /// the default rule when the original is the default rule).
    pub fn duplicate_rule(&mut self, name: &str, new_name: &str) -> Result<(), EditError> {
        let mut copy = self
            .rule(name)
            .cloned()
            .ok_or_else(|| EditError::NotFound(name.into()))?;
        copy.name = new_name.to_string();
        let position = self.position(name).map(|p| p + 1);
        self.add_rule(copy, position)
    }

    /// Removes the rule called `name`.
    pub fn delete_rule(&mut self, name: &str) -> Result<Rule, EditError> {
        let idx = self.index(name)?;
        Ok(self.rules.remove(idx))
    }

    /// Moves the rule called `name`; returns its new 1-based position.
    pub fn move_rule(&mut self, name: &str, to: Move) -> Result<usize, EditError> {
        let idx = self.index(name)?;
        let max = self.rules.len();
        let target = match to {
            Move::To(pos) if pos == 0 || pos > max => return Err(EditError::Position { pos, max }),
            Move::To(pos) => pos - 1,
            Move::Up => idx.saturating_sub(1),
            Move::Down => (idx + 1).min(max - 1),
        };
        let rule = self.rules.remove(idx);
        self.rules.insert(target, rule);
        Ok(target + 1)
    }

    /// Replaces the options next to the rules.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// 1-based position of a non-default rule.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.name == name)
            .map(|i| i + 1)
    }

    fn index(&self, name: &str) -> Result<usize, EditError> {
        if self.default_rule.name == name {
            return Err(EditError::DefaultRule("deleted or moved"));
        }
        self.rules
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| EditError::NotFound(name.into()))
    }

    fn rule_mut(&mut self, name: &str) -> Result<&mut Rule, EditError> {
        if self.default_rule.name == name {
            return Ok(&mut self.default_rule);
        }
        self.rules
            .iter_mut()
            .find(|r| r.name == name)
            .ok_or_else(|| EditError::NotFound(name.into()))
    }
}

fn apply_edit(rule: &mut Rule, edit: RuleEdit) -> Result<(), EditError> {
    for text in &edit.remove_conditions {
        let before = rule.conditions.len();
        rule.conditions.retain(|c| c.to_string() != *text);
        if rule.conditions.len() == before {
            return Err(Invalid::new(
                format!("rule `{}` has no condition `{text}`", rule.name),
                "give the condition as `policy show` prints it: field operator value",
            )
            .into());
        }
    }
    for path in &edit.remove_allow {
        let before = rule.allow.len();
        rule.allow.retain(|a| a.path() != path);
        if rule.allow.len() == before {
            return Err(Invalid::new(
                format!("rule `{}` has no allow entry `{path}`", rule.name),
                "give the path exactly as `policy show` prints it",
            )
            .into());
        }
    }
    if edit.clear_scope {
        rule.conditions.clear();
    }
    if edit.clear_allow {
        rule.allow.clear();
    }
    rule.conditions.extend(edit.add_conditions);
    rule.allow.extend(edit.add_allow);
    if let Some(name) = edit.rename {
        rule.name = name;
    }
    if let Some(d) = edit.description {
        rule.description = d;
    }
    if let Some(a) = edit.action {
        rule.action = a;
    }
    Ok(())
}

/// The backup path kept next to `path` (`FILE.bak`).
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically, keeping the previous version as `FILE.bak`.
///
/// The new file gets the previous file's permissions (0644 for a new file). On error the
/// target is unchanged and temporary files are removed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let bak_tmp = dir.join(format!(".{name}.bak.tmp-{}", std::process::id()));
    let result = write_steps(path, &dir, &tmp, &bak_tmp, contents);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&bak_tmp);
    }
    result
}

fn write_steps(
    path: &Path,
    dir: &Path,
    tmp: &Path,
    bak_tmp: &Path,
    contents: &[u8],
) -> std::io::Result<()> {
    let previous = match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    write_synced(tmp, contents, mode)?;

    // The backup is written and renamed into place before the target is replaced, so a crash
    // at any point leaves either the old file or the new one, never a partial one.
    if let Some(old) = previous {
        write_synced(bak_tmp, &old, mode)?;
        fs::rename(bak_tmp, backup_path(path))?;
    }
    fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(contents)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()
}
