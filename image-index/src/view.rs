//! The merged, immutable view of an image built from its layers.
//!
//! Layers are given top first, as overlayfs `lowerdir` lists them, and applied bottom up with
//! overlayfs semantics: a whiteout deletes the path and everything below it from the layers
//! beneath; an opaque directory hides everything below it from the layers beneath (its own
//! layer's entries stay); a non-directory replaces whatever was at its path, directory tree
//! included; a directory over a directory merges.
//!
//! Path resolution follows symlinks of the image inside the image only, like `openat2` with
//! `RESOLVE_IN_ROOT`: an absolute target restarts at the image root, `..` never climbs above
//! it, and at most [`MAX_SYMLINKS`] links are followed per lookup (then the path is treated as
//! absent, as the kernel answers `ELOOP`).
//!
//! Invariants: every present path's ancestors are directories of the view; the content index
//! lists exactly the present regular files with a known hash.
//!
//! Limits: a path deleted by a whiteout is remembered by its lexical path only, so
//! [`ImageView::status`] reports it as deleted only when asked by that path (not through a
//! symlinked parent).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};

use crate::entry::{Entry, FileEntry};
use crate::hash::ContentHash;
use crate::layer::{LayerIndex, LayerNode, WalkProblem};

/// Most symlinks followed while resolving one path (the kernel's limit).
pub const MAX_SYMLINKS: usize = 40;

/// An entry of the merged image and the layer it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// The entry.
    pub entry: Entry,
    /// Index of the layer it comes from, in the top-first order of the layer list.
    pub layer: usize,
}

/// What the image has at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStatus<'a> {
    /// The image has this entry there.
    Present(&'a ViewEntry),
    /// A lower layer had the path; a whiteout or opaque directory in `layer` deleted it.
    Deleted {
        /// Index (top first) of the layer holding the whiteout or opaque directory.
        layer: usize,
    },
    /// No layer has the path.
    Absent,
}

/// The merged view of an ordered list of layers.
#[derive(Debug, Default)]
pub struct ImageView {
    entries: BTreeMap<PathBuf, ViewEntry>,
    deleted: BTreeMap<PathBuf, usize>,
    by_content: HashMap<ContentHash, Vec<PathBuf>>,
    problems: Vec<(usize, WalkProblem)>,
    layer_count: usize,
}

impl AsRef<LayerIndex> for LayerIndex {
    fn as_ref(&self) -> &LayerIndex {
        self
    }
}

impl ImageView {
    /// Merges layers given top first (overlayfs `lowerdir` order).
    pub fn merge<L: AsRef<LayerIndex>>(layers_top_first: &[L]) -> Self {
        let mut view = ImageView {
            layer_count: layers_top_first.len(),
            ..Default::default()
        };
        for (layer, index) in layers_top_first.iter().enumerate().rev() {
            let index = index.as_ref();
            for record in index.records() {
                view.apply(layer, &record.path, &record.node);
            }
            view.problems
                .extend(index.problems().iter().map(|p| (layer, p.clone())));
        }
        view.index_content();
        view
    }

    /// Applies one record of `layer` on top of the layers below it.
    fn apply(&mut self, layer: usize, path: &Path, node: &LayerNode) {
        match node {
            LayerNode::Whiteout => {
                self.remove_below(path, layer);
                if self.entries.remove(path).is_some() || !self.deleted.contains_key(path) {
                    self.deleted.insert(path.to_path_buf(), layer);
                }
            }
            LayerNode::OpaqueDir => {
                self.remove_below(path, layer);
                self.insert(path, Entry::Dir, layer);
            }
            LayerNode::Present(entry) => {
                let merges = matches!(entry, Entry::Dir)
                    && matches!(
                        self.entries.get(path),
                        Some(ViewEntry {
                            entry: Entry::Dir,
                            ..
                        })
                    );
                if !merges {
                    self.remove_below(path, layer);
                }
                self.insert(path, entry.clone(), layer);
            }
        }
    }

    fn insert(&mut self, path: &Path, entry: Entry, layer: usize) {
        self.deleted.remove(path);
        self.entries
            .insert(path.to_path_buf(), ViewEntry { entry, layer });
    }

    /// Removes every strict descendant of `dir`, remembering them as deleted by `layer`.
    fn remove_below(&mut self, dir: &Path, layer: usize) {
        let doomed: Vec<PathBuf> = self
            .entries
            .range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(dir))
            .map(|(p, _)| p.clone())
            .collect();
        for path in doomed {
            self.entries.remove(&path);
            self.deleted.insert(path, layer);
        }
    }

    fn index_content(&mut self) {
        for (path, view_entry) in &self.entries {
            if let Some(hash) = view_entry.entry.as_file().and_then(|f| f.hash) {
                self.by_content.entry(hash).or_default().push(path.clone());
            }
        }
    }

    /// The entry at `path` (absolute inside the image), resolving symlinked parent directories
    /// but not a symlink in the last component, like `lstat`.
    pub fn lookup(&self, path: &Path) -> Option<&Entry> {
        self.resolve(path, false).map(|(_, e)| &e.entry)
    }

    /// Like [`ImageView::lookup`], with the resolved path and the layer of the entry.
    pub fn lookup_entry(&self, path: &Path) -> Option<(PathBuf, &ViewEntry)> {
        self.resolve(path, false)
    }

    /// The regular file `path` leads to, following every symlink inside the image like `stat`,
    /// with its resolved path inside the image.
    pub fn resolve_file(&self, path: &Path) -> Option<(PathBuf, &FileEntry)> {
        let (resolved, view_entry) = self.resolve(path, true)?;
        view_entry.entry.as_file().map(|file| (resolved, file))
    }

    /// The entry `path` leads to after following every symlink inside the image (any kind of
    /// entry, unlike [`ImageView::resolve_file`]), with its resolved path.
    pub fn resolve_entry(&self, path: &Path) -> Option<(PathBuf, &ViewEntry)> {
        self.resolve(path, true)
    }

    /// Every image path whose regular file has exactly this content, sorted.
    pub fn paths_with_content(&self, hash: &ContentHash) -> Vec<PathBuf> {
        self.by_content.get(hash).cloned().unwrap_or_default()
    }

    /// Whether any regular file of the image has exactly this content.
    pub fn contains_content(&self, hash: &ContentHash) -> bool {
        self.by_content.contains_key(hash)
    }

    /// Present, deleted by a whiteout, or absent (see the module limits for deleted paths).
    pub fn status(&self, path: &Path) -> PathStatus<'_> {
        if let Some((_, view_entry)) = self.resolve(path, false) {
            return PathStatus::Present(view_entry);
        }
        match self.deleted.get(&lexical(path)) {
            Some(&layer) => PathStatus::Deleted { layer },
            None => PathStatus::Absent,
        }
    }

    /// Every present path of the image in path order, with its entry.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &ViewEntry)> {
        self.entries.iter().map(|(p, e)| (p.as_path(), e))
    }

    /// Number of present paths (the root directory included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the view has no paths at all (not even a root directory).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of layers the view was merged from.
    pub fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// What the layer walks could not read, with the layer index (top first).
    pub fn problems(&self) -> &[(usize, WalkProblem)] {
        &self.problems
    }

    /// Walks `path` component by component inside the image.
    fn resolve(&self, path: &Path, follow_last: bool) -> Option<(PathBuf, &ViewEntry)> {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut current = PathBuf::from("/");
        let mut links = 0usize;
        while let Some(name) = pending.pop() {
            if name == ".." {
                current.pop();
                continue;
            }
            let candidate = current.join(&name);
            let is_last = pending.is_empty();
            let view_entry = self.entries.get(&candidate)?;
            match &view_entry.entry {
                Entry::Symlink { target } if !is_last || follow_last => {
                    links += 1;
                    if links > MAX_SYMLINKS || target.as_os_str().is_empty() {
                        return None;
                    }
                    if target.is_absolute() {
                        current = PathBuf::from("/");
                    }
                    push_components(&mut pending, target);
                }
                _ if is_last => return Some((candidate, view_entry)),
                Entry::Dir => current = candidate,
                _ => return None,
            }
        }
        self.entries.get(&current).map(|e| (current.clone(), e))
    }
}

/// Pushes the components of `path` so that popping yields them in order; `..` is kept as a
/// component, `/` and `.` are dropped.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let start = stack.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => stack.push(name.to_os_string()),
            Component::ParentDir => stack.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    stack[start..].reverse();
}

/// `path` made absolute with `.` and `..` removed lexically, never above `/`.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}
