//! The layer cache: valid files are loaded instead of re-hashed; truncated, corrupted, foreign
//! or other-version files are detected and rebuilt; concurrent requests share one walk.

mod fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftguard_image_index::store::{FORMAT_VERSION, HEADER_LEN};
use driftguard_image_index::{
    load_or_index, CacheProblem, IndexCache, LayerKey, LayerSource, LayerStore, Origin,
};
use fixtures::*;

fn layer_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    file(dir.path(), "bin/tool", ELF, 0o755);
    file(dir.path(), "etc/conf", b"key=value\n", 0o644);
    link(dir.path(), "bin/alias", "tool");
    dir
}

struct Cached {
    _layer: tempfile::TempDir,
    _state: tempfile::TempDir,
    dir: PathBuf,
    store: LayerStore,
    key: LayerKey,
}

impl Cached {
    fn new() -> Self {
        let layer = layer_dir();
        let state = tempfile::tempdir().expect("tmp");
        let store = LayerStore::new(state.path().join("layers"));
        let dir = layer.path().to_path_buf();
        let key = LayerKey::for_dir(&dir).expect("key");
        Cached {
            _layer: layer,
            _state: state,
            dir,
            store,
            key,
        }
    }

    fn index(&self) -> Origin {
        load_or_index(Some(&self.store), &self.dir, &self.key)
            .expect("index")
            .1
    }

    fn cache_file(&self) -> PathBuf {
        self.store.path_of(&self.key)
    }

    fn problem(&self) -> CacheProblem {
        match self.store.load(&self.key) {
            driftguard_image_index::store::Lookup::Invalid(problem) => problem,
            other => panic!("expected an invalid cache file, got {other:?}"),
        }
    }

    /// Damages the cache file, checks the damage is named, then that it is rebuilt.
    fn damage_and_rebuild(&self, damage: impl FnOnce(&mut Vec<u8>)) -> CacheProblem {
        self.index();
        let mut bytes = fs::read(self.cache_file()).expect("read cache");
        damage(&mut bytes);
        fs::write(self.cache_file(), &bytes).expect("write damaged");
        let problem = self.problem();
        assert_eq!(
            self.index(),
            Origin::Walked,
            "a damaged file is never trusted"
        );
        assert_eq!(self.index(), Origin::Cached, "the rebuilt file is valid");
        problem
    }
}

#[test]
fn second_request_loads_the_same_index_from_cache() {
    let cached = Cached::new();
    let (walked, origin) = load_or_index(Some(&cached.store), &cached.dir, &cached.key).expect("1");
    assert_eq!(origin, Origin::Walked);
    let (loaded, origin) = load_or_index(Some(&cached.store), &cached.dir, &cached.key).expect("2");
    assert_eq!(origin, Origin::Cached);
    assert_eq!(walked, loaded);
    let leftovers: Vec<_> = fs::read_dir(cached.store.path_of(&cached.key).parent().expect("dir"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

#[test]
fn truncated_file_is_rebuilt() {
    let cached = Cached::new();
    let problem = cached.damage_and_rebuild(|b| b.truncate(b.len() - 7));
    assert!(matches!(problem, CacheProblem::Length { .. }), "{problem}");
    let problem = cached.damage_and_rebuild(|b| b.truncate(HEADER_LEN - 1));
    assert!(
        matches!(problem, CacheProblem::Truncated { .. }),
        "{problem}"
    );
    let problem = cached.damage_and_rebuild(Vec::clear);
    assert!(
        matches!(problem, CacheProblem::Truncated { len: 0 }),
        "{problem}"
    );
}

#[test]
fn flipped_payload_byte_is_rebuilt() {
    let cached = Cached::new();
    let problem = cached.damage_and_rebuild(|b| {
        let at = HEADER_LEN + (b.len() - HEADER_LEN) / 2;
        b[at] ^= 0x01;
    });
    assert_eq!(problem, CacheProblem::Checksum);
    let problem = cached.damage_and_rebuild(|b| b[HEADER_LEN - 1] ^= 0x80);
    assert_eq!(
        problem,
        CacheProblem::Checksum,
        "a flipped checksum byte too"
    );
}

#[test]
fn wrong_version_and_magic_are_rebuilt() {
    let cached = Cached::new();
    let problem = cached.damage_and_rebuild(|b| {
        b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    });
    assert_eq!(
        problem,
        CacheProblem::Version {
            found: FORMAT_VERSION + 1
        }
    );
    let problem = cached.damage_and_rebuild(|b| b[0] = b'X');
    assert_eq!(problem, CacheProblem::BadMagic);
}

#[test]
fn file_of_another_layer_is_not_trusted() {
    let cached = Cached::new();
    let other = Cached::new();
    assert_eq!(other.index(), Origin::Walked);
    assert_eq!(cached.index(), Origin::Walked);
    fs::copy(other.cache_file(), cached.cache_file()).expect("copy");
    assert_eq!(cached.problem(), CacheProblem::KeyMismatch);
    assert_eq!(cached.index(), Origin::Walked);
}

#[test]
fn layer_key_follows_directory_identity() {
    let layer = layer_dir();
    let key = LayerKey::for_dir(layer.path()).expect("key");
    let via_dotdot = layer.path().join("bin/..");
    assert_eq!(
        LayerKey::for_dir(&via_dotdot).expect("key"),
        key,
        "canonical path"
    );
    fs::write(layer.path().join("new-entry"), b"x").expect("write");
    assert_ne!(
        LayerKey::for_dir(layer.path()).expect("key"),
        key,
        "ctime changed"
    );
    let digest = LayerSource {
        dir: layer.path().into(),
        digest: Some("sha256:ab".into()),
    };
    assert_eq!(
        digest.key().expect("key"),
        LayerKey::Digest("sha256:ab".into())
    );
    let err = LayerKey::for_dir(&layer.path().join("nope")).expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
}

/// A layer with enough files that its walk takes a while.
fn big_layer(files: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..files {
        file(
            dir.path(),
            &format!("d{}/f{i}", i % 32),
            format!("content {i}").as_bytes(),
            0o644,
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_walk_and_reuse_the_cache() {
    let state = tempfile::tempdir().expect("tmp");
    let (top, bottom) = (big_layer(3000), big_layer(1000));
    let dirs = vec![top.path().to_path_buf(), bottom.path().to_path_buf()];
    let cache = IndexCache::new(state.path().to_path_buf());
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (cache, dirs) = (cache.clone(), dirs.clone());
            tokio::spawn(async move { cache.image(dirs).await })
        })
        .collect();
    let mut views = Vec::new();
    for request in requests {
        views.push(request.await.expect("join").expect("image"));
    }
    let counters = cache.counters();
    assert_eq!(counters.walked + counters.loaded, 2, "{counters:?}");
    assert_eq!(counters.walked, 2, "{counters:?}");
    assert_eq!(views[0].len(), 1 + 32 + 3000);
    assert!(views.iter().all(|v| v.len() == views[0].len()));
    let again = cache.image(dirs.clone()).await.expect("again");
    assert!(
        views.iter().any(|v| Arc::ptr_eq(v, &again)),
        "a live view is shared"
    );
    let held = again;

    // A new process (new cache object) on the same state dir loads both layers.
    let fresh = IndexCache::new(state.path().to_path_buf());
    let view = fresh.image(dirs.clone()).await.expect("fresh");
    assert_eq!(fresh.counters().walked, 0);
    assert_eq!(fresh.counters().loaded, 2);
    assert_eq!(view.len(), held.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_walks_in_the_background() {
    let state = tempfile::tempdir().expect("tmp");
    let layer = big_layer(500);
    let cache = IndexCache::new(state.path().to_path_buf());
    cache.prefetch(vec![layer.path().to_path_buf()]);
    let view = cache
        .image(vec![layer.path().to_path_buf()])
        .await
        .expect("image");
    assert_eq!(view.len(), 1 + 32 + 500);
    assert_eq!(
        cache.counters().walked,
        1,
        "the request joined the prefetch's walk"
    );
}

#[tokio::test]
async fn errors_name_the_layer() {
    let cache = IndexCache::ephemeral();
    let missing = Path::new("/nonexistent/layer/fs").to_path_buf();
    let err = cache.image(vec![missing]).await.expect_err("missing layer");
    assert!(err.to_string().contains("/nonexistent/layer/fs"), "{err}");
    let err = cache.image(Vec::new()).await.expect_err("no layers");
    assert!(err.to_string().contains("at least one layer"), "{err}");
}
