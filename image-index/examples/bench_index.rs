//! Indexing throughput against single-threaded BLAKE3 on the same bytes, and the cost of a
//! cached re-index.
//!
//! Usage: `cargo run --release -p driftguard-image-index --example bench_index -- DIR [ROUNDS]`
//!
//! One run, one tree, warm page cache (a first full pass reads every file):
//! 1. baseline: every regular file hashed with `blake3::Hasher::update_mmap` in one thread;
//! 2. index: `index_layer(DIR)` (walk, stat, xattrs, parallel hashing) on the rayon pool;
//! 3. cache: the first `load_or_index` (walk + write the cache file) against loading it back.
//!
//! Each figure is the median of ROUNDS (default 5) runs; baseline and index runs alternate
//! and a ratio is the median of the per-round ratios. The machine's load average is
//! printed before and after, since other work on the machine skews every figure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use driftguard_image_index::{index_layer, load_or_index, LayerKey, LayerStore, Origin};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        bail!("usage: bench_index DIR [ROUNDS]");
    };
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    println!("load average before: {}", loadavg());
    println!(
        "cores: {}, rayon threads: {}",
        cores(),
        rayon::current_num_threads()
    );

    let files = regular_files(&dir)?;
    let bytes: u64 = files.iter().map(|(_, size)| size).sum();
    println!(
        "tree: {} ({} files, {:.1} MB)",
        dir.display(),
        files.len(),
        mb(bytes)
    );
    baseline(&files)?; // warms the page cache

    // Rounds interleave the three measurements so that load from other work on the machine
    // hits them alike; each ratio is the median of the per-round ratios.
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let base = baseline(&files)?;
        let pool = timed(|| Ok(index_layer(&dir).map(drop)?))?;
        let single = one_thread.install(|| timed(|| Ok(index_layer(&dir).map(drop)?)))?;
        samples.push([base, pool, single]);
    }
    let names = [
        "blake3 one thread (baseline)",
        "index_layer, rayon pool",
        "index_layer, one thread",
    ];
    for (column, name) in names.iter().enumerate() {
        let took = median_of(samples.iter().map(|s| s[column]).collect());
        let ratios = samples
            .iter()
            .map(|s| s[0].as_secs_f64() / s[column].as_secs_f64());
        report(name, took, bytes, median_f64(ratios.collect()));
    }

    let (first, cached) = cache_costs(&dir, rounds)?;
    println!(
        "cache: first index + write {:.1} ms, cached load {:.2} ms = {:.2} % of first",
        ms(first),
        ms(cached),
        100.0 * cached.as_secs_f64() / first.as_secs_f64()
    );
    println!("load average after: {}", loadavg());
    Ok(())
}

/// Every regular file below `dir` with its size.
fn regular_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        if entry.file_type().is_file() {
            files.push((entry.path().to_path_buf(), entry.metadata()?.len()));
        }
    }
    Ok(files)
}

/// Hashes every file with the blake3 crate in this thread.
fn baseline(files: &[(PathBuf, u64)]) -> anyhow::Result<Duration> {
    timed(|| {
        for (path, _) in files {
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_mmap(path)
                .with_context(|| format!("hashing {}", path.display()))?;
            std::hint::black_box(hasher.finalize());
        }
        Ok(())
    })
}

/// First index of a layer with a fresh state dir, then the median cached load.
fn cache_costs(dir: &Path, rounds: usize) -> anyhow::Result<(Duration, Duration)> {
    let state = tempfile::tempdir()?;
    let store = LayerStore::new(state.path().to_path_buf());
    let key = || LayerKey::for_dir(dir);
    let started = Instant::now();
    let (_, origin) = load_or_index(Some(&store), dir, &key()?)?;
    let first = started.elapsed();
    if origin != Origin::Walked {
        bail!("fresh state dir did not walk the layer");
    }
    let cached = median(rounds, || {
        timed(|| match load_or_index(Some(&store), dir, &key()?)? {
            (_, Origin::Cached) => Ok(()),
            (_, Origin::Walked) => bail!("cache file was not used"),
        })
    })?;
    Ok((first, cached))
}

fn timed(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed())
}

fn median(
    rounds: usize,
    mut run: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let times = (0..rounds.max(1))
        .map(|_| run())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(median_of(times))
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints a median time, its throughput, and the median per-round throughput ratio to the
/// baseline.
fn report(what: &str, took: Duration, bytes: u64, ratio: f64) {
    let throughput = mb(bytes) / took.as_secs_f64();
    println!(
        "{what:<30} {:>9.1} ms {throughput:>8.1} MB/s  ratio {ratio:.2}",
        ms(took)
    );
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
