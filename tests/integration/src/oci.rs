//! OCI image-layout archives built from plain directories, without docker.
//!
//! Each layer is one directory whose tree becomes one gzip-compressed tar layer. Whiteouts are
//! written the way the OCI image spec defines them: an empty file named `.wh.NAME` in a layer
//! directory deletes `NAME` of the layers below, and an empty `.wh..wh..opq` makes its directory
//! opaque. The builder copies such names verbatim, so a test writes whiteouts as ordinary files.
//!
//! Invariants: archives are reproducible (entries sorted by name, owner 0:0, mtime 0, gzip
//! header without a timestamp), so two builds of the same tree have the same digests; hard
//! links inside one layer are kept as tar hard links.
//!
//! Limits: only directories, regular files, symlinks and hard links are supported; a device,
//! fifo or socket in a layer directory is an error. The image is always linux/amd64.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The container configuration of an image.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV`, as `KEY=VALUE`.
    pub env: Vec<String>,
}

/// An image to build: its reference name, its layers bottom first, and its config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Reference name, e.g. `localhost/driftguard/busybox:1`.
    pub name: String,
    /// Layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// Entrypoint, command and environment.
    pub config: ImageConfig,
}

/// Digests of a built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Digest of the manifest (`sha256:…`).
    pub manifest_digest: String,
    /// Uncompressed layer digests (`diff_ids`), bottom layer first.
    pub diff_ids: Vec<String>,
}

struct Blob {
    digest: String,
    size: u64,
}

/// Writes `spec` as an OCI image-layout tar at `out`.
pub fn build_image(spec: &ImageSpec, out: &Path) -> Result<BuiltImage> {
    let work = tempfile::tempdir().context("creating a work directory")?;
    let blobs = work.path().join("blobs/sha256");
    fs::create_dir_all(&blobs)?;

    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in &spec.layers {
        let (blob, diff_id) =
            write_layer(dir, &blobs).with_context(|| format!("layer {}", dir.display()))?;
        layers.push(blob);
        diff_ids.push(diff_id);
    }

    let config = image_config(spec, &diff_ids);
    let config_blob = write_blob(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_blob),
        "layers": layers.iter()
            .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l))
            .collect::<Vec<_>>(),
    });
    let manifest_blob = write_blob(&blobs, &serde_json::to_vec(&manifest)?)?;

    let tag = spec
        .name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let mut manifest_desc =
        descriptor("application/vnd.oci.image.manifest.v1+json", &manifest_blob);
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": spec.name,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    fs::write(work.path().join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        work.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    write_layout_tar(work.path(), out)?;
    Ok(BuiltImage {
        manifest_digest: manifest_blob.digest,
        diff_ids,
    })
}

fn image_config(spec: &ImageSpec, diff_ids: &[String]) -> serde_json::Value {
    let mut config = serde_json::Map::new();
    if !spec.config.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.config.entrypoint));
    }
    if !spec.config.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.config.cmd));
    }
    if !spec.config.env.is_empty() {
        config.insert("Env".into(), json!(spec.config.env));
    }
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created_by": "driftguard-testkit"}))
            .collect::<Vec<_>>(),
    })
}

fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": blob.digest, "size": blob.size})
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<Blob> {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(blobs.join(&hex), bytes)?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
    })
}

/// A writer that hashes everything passing through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one gzip layer blob; returns it and the layer's diff id.
fn write_layer(dir: &Path, blobs: &Path) -> Result<(Blob, String)> {
    let tmp = blobs.join(".layer.tmp");
    let compressed = HashingWriter {
        inner: File::create(&tmp)?,
        hasher: Sha256::new(),
        count: 0,
    };
    let gz: GzEncoder<_> = GzBuilder::new()
        .mtime(0)
        .write(compressed, Compression::default());
    let uncompressed = HashingWriter {
        inner: gz,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(uncompressed);
    append_tree(&mut tar, dir)?;
    let uncompressed = tar.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(uncompressed.hasher.finalize()));
    let compressed = uncompressed.inner.finish()?;
    let digest = hex::encode(compressed.hasher.finalize());
    fs::rename(&tmp, blobs.join(&digest))?;
    Ok((
        Blob {
            digest: format!("sha256:{digest}"),
            size: compressed.count,
        },
        diff_id,
    ))
}

fn append_tree<W: Write>(tar: &mut tar::Builder<W>, dir: &Path) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walk = walk_sorted(dir)?;
    for path in walk {
        let rel = path.strip_prefix(dir)?;
        let meta = fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_mode(meta.mode() & 0o7777);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())?;
        } else if ft.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, rel, fs::read_link(&path)?)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key).filter(|_| meta.nlink() > 1) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                tar.append_link(&mut header, rel, first)?;
                continue;
            }
            links.insert(key, rel.to_path_buf());
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            tar.append_data(&mut header, rel, File::open(&path)?)?;
        } else {
            bail!(
                "{}: unsupported file type in a layer directory",
                path.display()
            );
        }
    }
    tar.finish()?;
    Ok(())
}

/// Every path below `dir` (not `dir` itself), parents before children, names sorted.
fn walk_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type()?.is_dir() {
            out.extend(walk_sorted(&path)?);
        }
    }
    Ok(out)
}

/// Tars the layout directory (uncompressed, as `ctr images import` expects).
fn write_layout_tar(layout: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    let mut tar = tar::Builder::new(File::create(&tmp)?);
    for path in walk_sorted(layout)? {
        let rel = path.strip_prefix(layout)?;
        let meta = fs::metadata(&path)?;
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(meta.len());
            tar.append_data(&mut header, rel, File::open(&path)?)?;
        }
    }
    tar.into_inner()?.sync_all()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
        fs::write(root.join(".wh.gone"), b"").unwrap();
    }

    #[test]
    fn builds_are_reproducible_and_keep_whiteouts_and_links() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let spec = ImageSpec {
            name: "localhost/t/x:1".into(),
            layers: vec![src.path().to_path_buf()],
            config: ImageConfig {
                cmd: vec!["sh".into()],
                ..Default::default()
            },
        };
        let out = tempfile::tempdir().unwrap();
        let a = build_image(&spec, &out.path().join("a.tar")).unwrap();
        let b = build_image(&spec, &out.path().join("b.tar")).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);

        let mut entries = Vec::new();
        let layout = File::open(out.path().join("a.tar")).unwrap();
        let mut outer = tar::Archive::new(layout);
        for e in outer.entries().unwrap() {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut e.unwrap(), &mut bytes).unwrap();
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
                for le in inner.entries().unwrap() {
                    let le = le.unwrap();
                    entries.push((
                        le.path().unwrap().display().to_string(),
                        le.header().entry_type(),
                    ));
                }
            }
        }
        assert!(entries.contains(&(".wh.gone".into(), tar::EntryType::Regular)));
        assert!(entries.contains(&("bin/alias".into(), tar::EntryType::Symlink)));
        assert!(entries.contains(&("bin/tool2".into(), tar::EntryType::Link)));
    }
}
