//! Exec overhead of the supervisor, measured against a container without any seccomp filter.
//!
//! In one run, rounds alternate between three busybox bundles on overlay rootfs under runc
//! 1.1.5, all running the same static helper that times fork+execve+wait of an image binary
//! per iteration: `/bin/true` from busybox and `/bin/tiny` (a static `return 0`), the cheapest
//! execs there are, and `/usr/bin/gnu-true`, Debian's dynamically linked `true` with its loader
//! and libc (the common shape of a production binary; its `PT_INTERP` loader is checked on
//! every exec too):
//!
//! - `none`: no seccomp section at all (the baseline of every ratio);
//! - `floor`: containerd's RuntimeDefault merged with the notify rules, answered by a listener
//!   that sends `CONTINUE` at once without looking at the exec — what the filter and the two
//!   wake-ups of any seccomp-notify supervisor cost on this machine, before any decision;
//! - `no gate`: the same profile answered by the real supervisor (in this process, with the
//!   project's policy store and image index) with the exec gate off: the seccomp decision only;
//! - `driftguard`: the supervisor as configured by default, the exec gate on (every file the
//!   kernel opens for exec re-checked through fanotify).
//!
//! Verdicts are cached after the first exec of each file, so both supervised configurations
//! measure the cached path.
//!
//! Rounds are short and their order rotates, so slow drifts of the machine's load fall on all
//! configurations alike. The bench prints p50/p99 per configuration and their ratios to `none`,
//! and the supervisor's own decision time (receive to answer) p50/p99 in µs.
//!
//! Run as root: `cargo bench -p driftguard-seccomp --bench exec_overhead` (env `DG_BENCH_N`
//! execs per round, default 250; `DG_BENCH_ROUNDS`, default 16).

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use driftguard_seccomp::{handoff, sys};
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

/// The configurations, in the order of [`Row::samples`].
const CONFIGS: [&str; 4] = ["none", "floor", "no gate", "driftguard"];

struct Row {
    binary: &'static str,
    samples: [Vec<u64>; 4],
}

/// Answers every notification of every handed-off fd with `CONTINUE`, one thread per fd (the
/// supervisor's own serving shape), until the fd hangs up.
async fn floor_listener(dir: &Path) -> Result<PathBuf> {
    let socket = dir.join("floor.sock");
    let listener = tokio::net::UnixListener::bind(&socket).context("floor socket")?;
    let stop: OwnedFd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(handed) = handoff::receive(&stream).await else {
                continue;
            };
            let stop = stop.try_clone().expect("dup eventfd");
            std::thread::spawn(move || answer_all(handed.notify_fd, stop));
        }
    });
    Ok(socket)
}

fn answer_all(fd: OwnedFd, stop: OwnedFd) {
    let _ = sys::set_sync_wake_up(fd.as_fd());
    while let Ok(sys::Wait::Pending) = sys::wait(fd.as_fd(), stop.as_fd()) {
        if let Ok(notif) = sys::recv(fd.as_fd()) {
            let _ = sys::send_continue(fd.as_fd(), notif.id);
        }
    }
}

async fn measure(
    binary: &'static str,
    n: usize,
    rounds: usize,
    sups: [&Running; 2],
    floor: &Path,
) -> Result<Row> {
    let runc = support::runc("1.1.5")?;
    let count = n.to_string();
    let args = ["/bin/xat", "time", binary, count.as_str()];
    let bundles = [
        Bundle::unfiltered(&runc, &args)?,
        Bundle::new(&runc, floor, &args)?,
        Bundle::new(&runc, &sups[0].socket, &args)?,
        Bundle::new(&runc, &sups[1].socket, &args)?,
    ];
    let stats = [sups[0].stats.clone(), sups[1].stats.clone()];
    let row = tokio::task::spawn_blocking(move || -> Result<Row> {
        // Warm-up (page cache, image index, verdict cache), then rotating rounds.
        for bundle in &bundles {
            samples(bundle, binary, n)?;
        }
        stats.iter().for_each(|s| s.clear());
        let mut row = Row {
            binary,
            samples: Default::default(),
        };
        for round in 0..rounds {
            for k in 0..CONFIGS.len() {
                let which = (round + k) % CONFIGS.len();
                let mut got = samples(&bundles[which], binary, n)?;
                row.samples[which].append(&mut got);
            }
        }
        Ok(row)
    })
    .await??;
    Ok(row)
}

fn report(row: &mut Row) {
    for samples in &mut row.samples {
        samples.sort_unstable();
    }
    let base = &row.samples[0];
    let (b50, b99) = (quantile(base, 0.5), quantile(base, 0.99));
    for (name, samples) in CONFIGS.iter().zip(&row.samples) {
        let (p50, p99) = (quantile(samples, 0.5), quantile(samples, 0.99));
        println!(
            "{:<10} {:<10} p50 {:>7.1} µs p99 {:>7.1} µs | ratio to none p50 {:.3} p99 {:.3} ({} execs)",
            row.binary,
            name,
            p50,
            p99,
            p50 / b50,
            p99 / b99,
            samples.len()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = env_usize("DG_BENCH_N", 250);
    let rounds = env_usize("DG_BENCH_ROUNDS", 16);
    let no_gate = Running::start_with(None, false)
        .await
        .context("supervisor")?;
    let supervisor = Running::start(None).await.context("supervisor")?;
    let dir = tempfile::Builder::new().prefix("dg-bench-").tempdir()?;
    let floor = floor_listener(dir.path()).await?;
    println!(
        "fork+execve+wait inside a container, runc 1.1.5, {rounds} rotating rounds of {n} per \
         configuration"
    );
    for binary in ["/bin/true", "/bin/tiny", "/usr/bin/gnu-true"] {
        let mut row = measure(binary, n, rounds, [&no_gate, &supervisor], &floor).await?;
        report(&mut row);
        for (name, sup) in [("no gate", &no_gate), ("driftguard", &supervisor)] {
            let stats = &sup.stats;
            println!(
                "{:<10} {:<10} seccomp decision time p50 {} µs p99 {} µs ({} decisions)",
                binary,
                name,
                stats.quantile(0.5).unwrap_or(0),
                stats.quantile(0.99).unwrap_or(0),
                stats.len()
            );
        }
    }
    Ok(())
}
