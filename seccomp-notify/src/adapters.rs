//! The supervisor's traits implemented for the project's policy store and image index.
//!
//! Invariant: these are thin conversions; all policy logic stays in driftguard-policy and all
//! image knowledge in driftguard-image-index.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftguard_image_index::{ImageView, IndexCache};
use driftguard_policy::{FailurePolicy, PolicyStore, Scope};

use crate::classify::{ContentMatch, ImageFile, ImageLookup};
use crate::decide::{Decider, Decision, ExecFacts, ImageSource};

impl Decider for PolicyStore {
    fn decide(&self, scope: &Scope, facts: &ExecFacts<'_>) -> Decision {
        self.current().decide(scope, facts)
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.current().failure_policy()
    }
}

impl ImageLookup for ImageView {
    fn file_at(&self, path: &Path) -> Option<ImageFile> {
        let file = self.lookup(path)?.as_file()?;
        Some(ImageFile {
            exec_bits: file.exec_bits,
            hash: file.hash,
        })
    }

    fn content(&self, hash: &[u8; 32]) -> ContentMatch {
        let paths = self.paths_with_content(hash);
        if paths.is_empty() {
            return ContentMatch::None;
        }
        let executable = paths
            .iter()
            .filter_map(|p| self.lookup(p).and_then(|e| e.as_file()))
            .any(|f| f.exec_bits);
        if executable {
            ContentMatch::Executable
        } else {
            ContentMatch::NotExecutable
        }
    }
}

#[async_trait::async_trait]
impl ImageSource for IndexCache {
    async fn image(&self, lowerdirs: Vec<PathBuf>) -> Result<Arc<dyn ImageLookup>, String> {
        let view = IndexCache::image(self, lowerdirs)
            .await
            .map_err(|err| err.to_string())?;
        Ok(view)
    }
}
