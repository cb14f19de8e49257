//! `driftguard index` and `driftguard check`: the image index from the command line.
//!
//! `index DIR...` prints the merged index of layer directories given top first (overlayfs
//! `lowerdir` order), one line per image path, and the time taken; `check --layers DIR... PATH`
//! prints what the index says about one path. Both reuse cached layer indexes when given
//! `--cache-dir`.
//!
//! Limits: paths and symlink targets that are not UTF-8 are printed lossily (U+FFFD); the
//! output is for people and scripts, not a lossless export.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use driftguard_image_index::{
    image_blocking, Entry, FileEntry, ImageView, LayerSource, LayerStore, Origin, PathStatus,
    ViewEntry,
};
use serde_json::{json, Value};

/// Arguments of `driftguard index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Layer directories, top layer first (overlayfs `lowerdir` order).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// One JSON object per line per path; the summary goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Directory where layer indexes are kept and reused.
    #[arg(long, value_name = "D")]
    pub cache_dir: Option<PathBuf>,
}

/// Arguments of `driftguard check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Layer directories, top layer first. When PATH is not given separately, the last value
    /// after `--layers` is the path to check.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// Absolute path inside the image, e.g. /bin/sh.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Directory where layer indexes are kept and reused.
    #[arg(long, value_name = "D")]
    pub cache_dir: Option<PathBuf>,
}

/// Builds the merged view of `dirs`, naming the layer on failure.
fn build_view(
    dirs: &[PathBuf],
    cache_dir: Option<&Path>,
) -> anyhow::Result<(ImageView, Vec<Origin>, Duration)> {
    let store = cache_dir.map(|d| LayerStore::new(d.to_path_buf()));
    let sources: Vec<LayerSource> = dirs.iter().cloned().map(LayerSource::dir).collect();
    let started = Instant::now();
    let (view, origins) = image_blocking(store.as_ref(), &sources).context("indexing layers")?;
    Ok((view, origins, started.elapsed()))
}

/// Runs `driftguard index`.
pub fn run_index(args: IndexArgs) -> anyhow::Result<ExitCode> {
    let (view, origins, elapsed) = build_view(&args.dirs, args.cache_dir.as_deref())?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (path, view_entry) in view.iter() {
        if args.json {
            writeln!(out, "{}", entry_json(path, view_entry))?;
        } else {
            writeln!(out, "{}", entry_line(path, view_entry))?;
        }
    }
    let summary = summary(&view, &origins, elapsed);
    if args.json {
        out.flush()?;
        eprintln!("{summary}");
    } else {
        writeln!(out, "{summary}")?;
        out.flush()?;
    }
    report_problems(&view, &args.dirs);
    Ok(ExitCode::SUCCESS)
}

/// Runs `driftguard check`; exits 0 when the path is present, 1 when deleted or absent.
pub fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (layers, path) = split_path(args.layers, args.path)?;
    let (view, _, _) = build_view(&layers, args.cache_dir.as_deref())?;
    let status = view.status(&path);
    let report = check_report(&view, &path, status);
    if args.json {
        println!("{report}");
    } else {
        print_check_text(&report);
    }
    report_problems(&view, &layers);
    Ok(match status {
        PathStatus::Present(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// The layer directories and the path to check; the path is the last `--layers` value when
/// it was not given on its own.
fn split_path(
    mut layers: Vec<PathBuf>,
    path: Option<PathBuf>,
) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    let path = match path {
        Some(path) => path,
        None if layers.len() >= 2 => layers.pop().context("no path given")?,
        None => bail!("give the path to check after the layer directories, e.g. /bin/sh"),
    };
    if !path.is_absolute() {
        bail!(
            "path to check {} must be absolute inside the image",
            path.display()
        );
    }
    Ok((layers, path))
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// One human-readable line: kind, mode, size, hash, flags, path.
fn entry_line(path: &Path, view_entry: &ViewEntry) -> String {
    let layer = view_entry.layer;
    match &view_entry.entry {
        Entry::File(file) => {
            let hash = file
                .hash_hex()
                .unwrap_or_else(|| format!("{:<64}", "unreadable"));
            let flags = exec_flags(file);
            let (mode, size, path) = (file.mode, file.size, path.display());
            format!("file    {mode:04o} {size:>12} {hash} {flags} L{layer} {path}")
        }
        Entry::Symlink { target } => {
            let (path, target) = (path.display(), target.display());
            format!(
                "symlink {:>4} {:>12} {:64} -- L{layer} {path} -> {target}",
                "", "", ""
            )
        }
        other => {
            let kind = other.kind_name();
            format!(
                "{kind:<7} {:>4} {:>12} {:64} -- L{layer} {}",
                "",
                "",
                "",
                path.display()
            )
        }
    }
}

/// `x` when an execute bit is set, `E` when the content looks executable.
fn exec_flags(file: &FileEntry) -> String {
    let x = if file.exec_bits { 'x' } else { '-' };
    let e = if file.looks_executable { 'E' } else { '-' };
    format!("{x}{e}")
}

/// One JSON object describing an image path.
fn entry_json(path: &Path, view_entry: &ViewEntry) -> Value {
    let mut object = json!({
        "path": lossy(path),
        "type": view_entry.entry.kind_name(),
        "layer": view_entry.layer,
    });
    match &view_entry.entry {
        Entry::File(file) => {
            object["mode"] = json!(format!("{:04o}", file.mode));
            object["size"] = json!(file.size);
            object["blake3"] = json!(file.hash_hex());
            object["exec_bits"] = json!(file.exec_bits);
            object["looks_executable"] = json!(file.looks_executable);
            if let Some(error) = &file.read_error {
                object["error"] = json!(error);
            }
        }
        Entry::Symlink { target } => object["target"] = json!(lossy(target)),
        Entry::Special { mode, .. } => object["mode"] = json!(format!("{mode:04o}")),
        Entry::Dir => {}
    }
    object
}

fn summary(view: &ImageView, origins: &[Origin], elapsed: Duration) -> String {
    let files: Vec<&FileEntry> = view.iter().filter_map(|(_, e)| e.entry.as_file()).collect();
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    let cached = origins.iter().filter(|o| **o == Origin::Cached).count();
    format!(
        "indexed {} paths ({} files, {} bytes) from {} layers ({} from cache) in {:.3} s",
        view.len(),
        files.len(),
        bytes,
        origins.len(),
        cached,
        elapsed.as_secs_f64()
    )
}

fn report_problems(view: &ImageView, dirs: &[PathBuf]) {
    for (layer, problem) in view.problems() {
        let dir = dirs
            .get(*layer)
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        eprintln!(
            "warning: layer {dir}: {}: {}",
            problem.path.display(),
            problem.message
        );
    }
}

/// Everything `check` says about one path, as JSON (also the source of the text output).
fn check_report(view: &ImageView, path: &Path, status: PathStatus<'_>) -> Value {
    let mut report = json!({ "path": lossy(path) });
    match status {
        PathStatus::Absent => report["status"] = json!("absent"),
        PathStatus::Deleted { layer } => {
            report["status"] = json!("deleted");
            report["deleted_by_layer"] = json!(layer);
        }
        PathStatus::Present(view_entry) => {
            report = entry_json(path, view_entry);
            report["status"] = json!("present");
            report["layers"] = json!(view.layer_count());
            if let Some((resolved, target)) = view.resolve_entry(path) {
                report["resolves_to"] = json!(lossy(&resolved));
                report["file"] = entry_json(&resolved, target);
                if let Some(file) = target.entry.as_file() {
                    report["same_content"] = json!(same_content(view, file, &resolved));
                }
            }
        }
    }
    report
}

/// Other image paths with exactly this file's content.
fn same_content(view: &ImageView, file: &FileEntry, resolved: &Path) -> Vec<String> {
    let Some(hash) = file.hash else {
        return Vec::new();
    };
    view.paths_with_content(&hash)
        .iter()
        .filter(|p| p.as_path() != resolved)
        .map(|p| lossy(p))
        .collect()
}

fn print_check_text(report: &Value) {
    let field = |v: &Value, k: &str| v.get(k).map(plain).unwrap_or_default();
    println!("path: {}", field(report, "path"));
    println!("status: {}", field(report, "status"));
    if report.get("deleted_by_layer").is_some() {
        println!(
            "deleted by: whiteout in layer {}",
            field(report, "deleted_by_layer")
        );
    }
    if report["status"] != "present" {
        return;
    }
    println!(
        "type: {} (layer {} of {})",
        field(report, "type"),
        field(report, "layer"),
        { field(report, "layers") }
    );
    if report.get("target").is_some() {
        println!("symlink target: {}", field(report, "target"));
    }
    if let Some(file) = report.get("file") {
        println!("resolves to: {}", field(report, "resolves_to"));
        for key in [
            "mode",
            "size",
            "blake3",
            "exec_bits",
            "looks_executable",
            "error",
        ] {
            if file.get(key).is_some() {
                println!("{key}: {}", field(file, key));
            }
        }
        let others = report["same_content"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let others: Vec<String> = others.iter().map(plain).collect();
        println!(
            "same content at: {}",
            if others.is_empty() {
                "-".into()
            } else {
                others.join(", ")
            }
        );
    }
}

/// A JSON value without quotes around strings.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn layers(name: &str) -> Scratch {
        let root = std::env::temp_dir().join(format!("dg-cli-{name}-{}", std::process::id()));
        let (top, bottom) = (root.join("top"), root.join("bottom"));
        std::fs::create_dir_all(bottom.join("bin")).expect("mkdir");
        std::fs::create_dir_all(&top).expect("mkdir");
        std::fs::write(bottom.join("bin/tool"), b"\x7fELF tool").expect("write");
        symlink("tool", bottom.join("bin/alias")).expect("symlink");
        std::fs::write(bottom.join("etc-gone"), b"x").expect("write");
        std::fs::write(top.join(".wh.etc-gone"), b"").expect("write");
        std::fs::write(top.join("copy"), b"\x7fELF tool").expect("write");
        Scratch(root)
    }

    #[test]
    fn path_is_taken_from_the_layer_list_when_not_separate() {
        let given = vec!["a".into(), "b".into(), "/bin/sh".into()];
        let (layers, path) = split_path(given, None).expect("split");
        assert_eq!(layers, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(path, PathBuf::from("/bin/sh"));
        assert!(split_path(vec!["a".into()], None).is_err());
        let err = split_path(vec!["a".into()], Some("bin/sh".into())).expect_err("relative");
        assert!(err.to_string().contains("bin/sh"), "{err}");
    }

    #[test]
    fn check_report_follows_symlinks_and_lists_same_content() {
        let scratch = layers("check");
        let dirs = vec![scratch.0.join("top"), scratch.0.join("bottom")];
        let (view, _, _) = build_view(&dirs, None).expect("view");

        let alias = Path::new("/bin/alias");
        let report = check_report(&view, alias, view.status(alias));
        assert_eq!(report["status"], "present");
        assert_eq!(report["type"], "symlink");
        assert_eq!(report["resolves_to"], "/bin/tool");
        assert_eq!(report["file"]["looks_executable"], true);
        assert_eq!(report["same_content"], json!(["/copy"]));

        let gone = Path::new("/etc-gone");
        let report = check_report(&view, gone, view.status(gone));
        assert_eq!(report["status"], "deleted");
        assert_eq!(report["deleted_by_layer"], 0);
        let absent = Path::new("/nope");
        assert_eq!(
            check_report(&view, absent, view.status(absent))["status"],
            "absent"
        );
    }

    #[test]
    fn json_lines_carry_the_hash_in_hex() {
        let scratch = layers("json");
        let (view, _, _) = build_view(&[scratch.0.join("bottom")], None).expect("view");
        let (path, entry) = view
            .iter()
            .find(|(p, _)| *p == Path::new("/bin/tool"))
            .expect("tool");
        let line = entry_json(path, entry);
        let file = std::fs::File::open(scratch.0.join("bottom/bin/tool")).expect("open");
        let hash = driftguard_image_index::hash_file(&file).expect("hash");
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(line["blake3"], hex);
        assert_eq!(line["mode"].as_str().map(str::len), Some(4));
        assert_eq!(line["type"], "file");
    }
}
