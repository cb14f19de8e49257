//! Exec overhead of the supervisor, measured against a container without any seccomp filter.
//!
//! In one run, rounds alternate between two busybox bundles on overlay rootfs under runc 1.1.5:
//! `none` (no seccomp section) and `notify` (containerd's RuntimeDefault merged with the notify
//! rules, answered by an in-process supervisor with the project's policy store and image
//! index). Inside each container a static helper times fork+execve+wait of an image binary
//! (`/bin/true` from busybox, and `/bin/tiny`, a static `return 0`) per iteration. The bench
//! prints p50/p99 per configuration, their ratios, and the supervisor's own decision time
//! (receive to answer) p50/p99 in µs. Verdicts are cached after the first exec of each file.
//!
//! Run as root: `cargo bench -p driftguard-seccomp --bench exec_overhead` (env `DG_BENCH_N`
//! execs per round, default 2000; `DG_BENCH_ROUNDS`, default 4).

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{bail, Context, Result};
use support::{Bundle, Running};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn samples(bundle: &Bundle, binary: &str, n: usize) -> Result<Vec<u64>> {
    let out = bundle.run()?;
    if !out.status.success() {
        bail!("bench container failed: {}", support::text(&out));
    }
    let text = String::from_utf8(out.stdout)?;
    let values: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if values.len() != n {
        bail!("{binary}: expected {n} samples, got {}", values.len());
    }
    Ok(values)
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index] as f64 / 1000.0
}

struct Row {
    binary: &'static str,
    none: Vec<u64>,
    notify: Vec<u64>,
}

async fn measure(binary: &'static str, n: usize, rounds: usize, sup: &Running) -> Result<Row> {
    let runc = support::runc("1.1.5")?;
    let count = n.to_string();
    let args = ["/bin/xat", "time", binary, count.as_str()];
    let none = Bundle::unfiltered(&runc, &args)?;
    let notify = Bundle::new(&runc, &sup.socket, &args)?;
    let mut row = Row {
        binary,
        none: Vec::new(),
        notify: Vec::new(),
    };
    // Warm-up (page cache, image index, verdict cache), then interleaved rounds.
    let (none, notify) = tokio::task::spawn_blocking(move || -> Result<(Bundle, Bundle)> {
        samples(&none, binary, n)?;
        samples(&notify, binary, n)?;
        Ok((none, notify))
    })
    .await??;
    sup.stats.clear();
    let mut pair = (none, notify);
    for _ in 0..rounds {
        let (a, b, mut r) = tokio::task::spawn_blocking(move || -> Result<_> {
            let r = (samples(&pair.0, binary, n)?, samples(&pair.1, binary, n)?);
            Ok((pair.0, pair.1, r))
        })
        .await??;
        row.none.append(&mut r.0);
        row.notify.append(&mut r.1);
        pair = (a, b);
    }
    Ok(row)
}

fn report(row: &mut Row) {
    row.none.sort_unstable();
    row.notify.sort_unstable();
    let (n50, n99) = (quantile(&row.none, 0.5), quantile(&row.none, 0.99));
    let (s50, s99) = (quantile(&row.notify, 0.5), quantile(&row.notify, 0.99));
    println!(
        "{:<10} none p50 {:>8.1} µs p99 {:>8.1} µs | notify p50 {:>8.1} µs p99 {:>8.1} µs | ratio p50 {:.3} p99 {:.3} ({} execs each)",
        row.binary,
        n50,
        n99,
        s50,
        s99,
        s50 / n50,
        s99 / n99,
        row.none.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = env_usize("DG_BENCH_N", 2000);
    let rounds = env_usize("DG_BENCH_ROUNDS", 4);
    let supervisor = Running::start(None).await.context("supervisor")?;
    println!("fork+execve+wait inside a container, runc 1.1.5, {rounds} interleaved rounds of {n}");
    for binary in ["/bin/true", "/bin/tiny"] {
        supervisor.stats.clear();
        let mut row = measure(binary, n, rounds, &supervisor).await?;
        report(&mut row);
        let stats = &supervisor.stats;
        println!(
            "{:<10} supervisor decision time p50 {} µs p99 {} µs ({} decisions)",
            binary,
            stats.quantile(0.5).unwrap_or(0),
            stats.quantile(0.99).unwrap_or(0),
            stats.len()
        );
    }
    Ok(())
}
