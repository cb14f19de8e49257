//! `dg-bench`: driftguard's end-to-end benchmark, a protected node against a plain one.
//!
//! Two private containerd instances run side by side: a node protected by driftguard
//! ([`Node`]: the runc wrapper as the runtime binary, the daemon with a block-drift policy) and
//! a plain one ([`Runtime`]: the same containerd and runc, no driftguard). One run prints:
//!
//! - pod start latency: `RunPodSandbox`, `CreateContainer`, `StartContainer` and the
//!   container's first line of output in its CRI log (polled every millisecond), as milestones
//!   from the first request; p50, p99 and the ratio driftguard / plain;
//! - exec latency: fork + execve + wait of the image's `/bin/true` inside a running busybox
//!   container, timed by busybox ash itself with `$EPOCHREALTIME` (`gettimeofday`, microsecond
//!   resolution) before and after each command; p50, p99, ratio; the same loop around the
//!   `:` builtin gives the timer's own floor;
//! - the daemon's and the fd holder's memory (`VmRSS`, `VmHWM`, open fds) with no pods, with
//!   `--rss-pods` running pods, and after those are removed.
//!
//! Both measurements alternate between the two runtimes round by round, swapping which goes
//! first, so slow phases of a shared machine hit both sides alike. Warm-up rounds (page cache,
//! image index, verdict cache) are discarded: the exec figures are for cached verdicts.
//!
//! Protected test nodes have shared one socket directory below `/run` per containerd version;
//! the bench refuses to run unless that directory is a tmpfs private to its mount namespace
//! (`contrib/bench/e2e.sh` sets this up) or it is told `--shared-mount-namespace`.
//!
//! Limits: p99 of `--pods` samples is close to the maximum for small counts; the exec timer
//! is the wall clock (`CLOCK_REALTIME`), which a clock step during the run would distort.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use driftguard_testkit::cri::{Container, Pod};
use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::{ContainerSpec, Cri, Node, PodSpec, Runtime};

/// The protected node's policy: drift is blocked, image files run silently.
const POLICY: &str = "\
apiVersion: driftguard.dev/v1
kind: DriftPolicy
metadata:
  name: bench
spec:
  failurePolicy: closed
  rules: []
  defaultRule:
    name: block-drift
    action: block
";

/// End-to-end benchmark: pod start and exec latency with and without driftguard, daemon memory.
#[derive(Parser)]
struct Args {
    /// The `driftguard` binary (a release build).
    #[arg(long)]
    driftguard: PathBuf,
    /// Pods started (and removed) on each runtime for the pod start figures.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Exec rounds on each runtime (one ExecSync each).
    #[arg(long, default_value_t = 40)]
    exec_rounds: usize,
    /// Timed execs per round.
    #[arg(long, default_value_t = 250)]
    execs: usize,
    /// Running pods on the protected node for the memory figure.
    #[arg(long, default_value_t = 20)]
    rss_pods: usize,
    /// Instance directory of the protected node (`DG_NODE_DEV_DIR`).
    #[arg(long, default_value = "/var/lib/driftguard-dev-bench")]
    node_dev_dir: String,
    /// Instance directory of the plain runtime (`DG_DEV_DIR`).
    #[arg(long, default_value = "/var/lib/driftguard-dev-bench-plain")]
    plain_dev_dir: String,
    /// After the measurements, record the daemon with `perf record -e cpu-clock -g` into this
    /// file while the protected container runs `--exec-rounds` more timed loops.
    #[arg(long)]
    perf_out: Option<PathBuf>,
    /// Run in the host's mount namespace (the node's sockets below /run are then shared with
    /// any other protected test node of the same containerd version).
    #[arg(long)]
    shared_mount_namespace: bool,
}

/// Milestones of one pod start, from the `RunPodSandbox` request.
#[derive(Debug, Clone, Copy)]
struct PodStart {
    sandbox: Duration,
    created: Duration,
    started: Duration,
    output: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.shared_mount_namespace && !private_socket_dir()? {
        bail!(
            "the protected node's socket directory below /run is not private to this mount \
             namespace; run dg-bench through contrib/bench/e2e.sh or pass \
             --shared-mount-namespace"
        );
    }
    // Single-threaded at this point: nothing else reads the environment yet.
    std::env::set_var("DG_NODE_DEV_DIR", &args.node_dev_dir);
    let load_before = read_trimmed("/proc/loadavg")?;
    let wall = Instant::now();

    let mut node = Node::start(&args.driftguard, POLICY).context("starting the protected node")?;
    let memory_fresh = memory_now(&node)?;
    let plain = Runtime::up(&[("DG_DEV_DIR", args.plain_dev_dir.as_str())])
        .context("starting the plain runtime")?;
    let (dg_cri, plain_cri) = (node.runtime.cri()?, plain.cri()?);

    let pods = pod_start_rounds(&plain_cri, &dg_cri, args.pods)?;
    let execs = exec_rounds(&plain_cri, &dg_cri, args.exec_rounds, args.execs)?;
    if let Some(out) = &args.perf_out {
        profile_daemon(&node, &dg_cri, out, args.exec_rounds * args.execs)?;
    }
    let memory_after = memory_now(&node)?;
    let memory_loaded = memory_with_pods(&node, &dg_cri, args.rss_pods)?;

    let mut report = header(&args, &node, &load_before)?;
    report += &pod_table(&pods, args.pods);
    report += &exec_table(&execs, args.exec_rounds, args.execs);
    report += &memory_table(&[
        ("0 pods (fresh daemon)".to_string(), memory_fresh),
        ("0 pods (after the runs above)".to_string(), memory_after),
        (format!("{} running pods", args.rss_pods), memory_loaded.0),
        ("0 pods (those removed)".to_string(), memory_loaded.1),
    ]);
    report += &targets(&execs);
    let _ = writeln!(
        report,
        "\nload average after: {}; wall time {:.0} s",
        read_trimmed("/proc/loadavg")?,
        wall.elapsed().as_secs_f64()
    );
    print!("{report}");
    node.stop_daemon()?;
    Ok(())
}

/// Whether the shared socket directory of protected test nodes is a tmpfs of this mount
/// namespace alone (as `contrib/bench/e2e.sh` sets it up).
fn private_socket_dir() -> Result<bool> {
    let ctd = std::env::var("DG_CONTAINERD").unwrap_or_else(|_| "2.1.9".into());
    let dir = format!("/run/driftguard-test-{ctd}");
    let mountinfo = read_trimmed("/proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|line| {
        let mut halves = line.split(" - ");
        let target = halves.next().and_then(|l| l.split(' ').nth(4));
        let fstype = halves.next().and_then(|r| r.split(' ').next());
        target == Some(dir.as_str()) && fstype == Some("tmpfs")
    }))
}

fn read_trimmed(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

// ---------------------------------------------------------------------------- pod start

/// Starts `n` pods on each runtime (plus one warm-up each), alternating the order per round.
fn pod_start_rounds(plain: &Cri, dg: &Cri, n: usize) -> Result<[Vec<PodStart>; 2]> {
    start_pod(plain, "bench-warm").context("warm-up pod on the plain runtime")?;
    start_pod(dg, "bench-warm").context("warm-up pod on the protected node")?;
    let mut out = [Vec::new(), Vec::new()];
    for round in 0..n {
        for side in order(round) {
            let cri = if side == 0 { plain } else { dg };
            let times = start_pod(cri, "bench-start")
                .with_context(|| format!("pod start round {round}, {}", SIDES[side]))?;
            out[side].push(times);
        }
        eprint!("\rdg-bench: pod start round {}/{n}", round + 1);
    }
    eprintln!();
    Ok(out)
}

const SIDES: [&str; 2] = ["plain", "driftguard"];

fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// One pod with one container that prints a line and sleeps; removed again before returning.
fn start_pod(cri: &Cri, prefix: &str) -> Result<PodStart> {
    let spec = ContainerSpec::shell("app", BUSYBOX, "echo ready; exec sleep 600");
    let t0 = Instant::now();
    let pod = cri.run_pod(&PodSpec::new(prefix, "bench"))?;
    let sandbox = t0.elapsed();
    let ctr = pod.create_container(&spec)?;
    let created = t0.elapsed();
    ctr.start()?;
    let started = t0.elapsed();
    wait_for_output(&ctr, "ready", Duration::from_secs(30))?;
    Ok(PodStart {
        sandbox,
        created,
        started,
        output: t0.elapsed(),
    })
}

fn wait_for_output(ctr: &Container<'_>, line: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // The log file appears with the first output; until then reading it fails.
        if ctr.logs().is_ok_and(|log| log.lines().any(|l| l == line)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "container {} printed no {line:?} within {timeout:?}",
                ctr.id()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------- exec

/// Exec latencies (µs) of `/bin/true` and of the timer floor, per side.
struct ExecSamples {
    exec: [Vec<u64>; 2],
    floor: [Vec<u64>; 2],
}

fn exec_rounds(plain: &Cri, dg: &Cri, rounds: usize, execs: usize) -> Result<ExecSamples> {
    let spec = ContainerSpec::shell("exec", BUSYBOX, "exec sleep 3600");
    let pods = [
        plain.run_pod(&PodSpec::new("bench-exec", "bench"))?,
        dg.run_pod(&PodSpec::new("bench-exec", "bench"))?,
    ];
    let ctrs = [
        pods[0].start_container(&spec)?,
        pods[1].start_container(&spec)?,
    ];
    for ctr in &ctrs {
        timed_loop(ctr, "/bin/true", 50).context("exec warm-up")?;
    }
    let mut out = ExecSamples {
        exec: [Vec::new(), Vec::new()],
        floor: [Vec::new(), Vec::new()],
    };
    for round in 0..rounds {
        for side in order(round) {
            let samples = timed_loop(&ctrs[side], "/bin/true", execs)
                .with_context(|| format!("exec round {round}, {}", SIDES[side]))?;
            out.exec[side].extend(samples);
            out.floor[side].extend(timed_loop(&ctrs[side], ":", execs / 5)?);
        }
        eprint!("\rdg-bench: exec round {}/{rounds}", round + 1);
    }
    eprintln!();
    Ok(out)
}

/// Runs `command` `count` times in one ExecSync, each timed by ash with `$EPOCHREALTIME`.
fn timed_loop(ctr: &Container<'_>, command: &str, count: usize) -> Result<Vec<u64>> {
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do a=$EPOCHREALTIME; {command}; b=$EPOCHREALTIME; \
         echo $a $b; i=$((i+1)); done"
    );
    let out = ctr.exec_sync(&["/bin/sh", "-c", &script], Duration::from_secs(300))?;
    ensure!(
        out.exit_code == 0,
        "timing loop in {} exited {}: {}",
        ctr.id(),
        out.exit_code,
        out.stderr
    );
    let samples = out
        .stdout
        .lines()
        .map(parse_interval)
        .collect::<Result<Vec<u64>>>()?;
    ensure!(
        samples.len() == count,
        "timing loop in {}: {} samples, expected {count}",
        ctr.id(),
        samples.len()
    );
    Ok(samples)
}

/// `"SEC.USEC SEC.USEC"` (two `$EPOCHREALTIME` values) → the interval in µs.
fn parse_interval(line: &str) -> Result<u64> {
    let (a, b) = line
        .split_once(' ')
        .with_context(|| format!("timing line {line:?}: expected two timestamps"))?;
    let (a, b) = (parse_micros(a)?, parse_micros(b)?);
    b.checked_sub(a)
        .with_context(|| format!("timing line {line:?}: the clock went backwards"))
}

fn parse_micros(stamp: &str) -> Result<u64> {
    let (sec, usec) = stamp
        .split_once('.')
        .with_context(|| format!("timestamp {stamp:?}: expected SEC.USEC"))?;
    ensure!(usec.len() == 6, "timestamp {stamp:?}: expected 6 decimals");
    Ok(sec.parse::<u64>()? * 1_000_000 + usec.parse::<u64>()?)
}

/// Records the daemon with perf while `execs` image execs run in a protected container.
fn profile_daemon(node: &Node, cri: &Cri, out: &Path, execs: usize) -> Result<()> {
    let pid = node.daemon_pid().context("the daemon is not running")?;
    let pod = cri.run_pod(&PodSpec::new("bench-perf", "bench"))?;
    let ctr = pod.start_container(&ContainerSpec::shell("perf", BUSYBOX, "exec sleep 3600"))?;
    timed_loop(&ctr, "/bin/true", 50)?;
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "20000", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .spawn()
        .context("starting perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let samples = timed_loop(&ctr, "/bin/true", execs)?;
    let elapsed = t0.elapsed();
    let status = std::process::Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()?;
    ensure!(status.success(), "could not stop perf record");
    perf.wait()?;
    let (p50, p99) = p50_p99(&samples);
    eprintln!(
        "dg-bench: perf record of daemon {pid}: {execs} execs in {:.2} s (p50 {p50} µs, p99          {p99} µs) -> {}",
        elapsed.as_secs_f64(),
        out.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------- memory

/// Memory of the daemon and the fd holder at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    daemon: ProcMemory,
    holder: ProcMemory,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProcMemory {
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
    threads: u64,
}

fn memory_now(node: &Node) -> Result<Memory> {
    let daemon = node.daemon_pid().context("the daemon is not running")?;
    let holder_file = node.dir.join("state/fd-holder.pid");
    let holder: u32 = read_trimmed(&holder_file.display().to_string())?
        .parse()
        .with_context(|| format!("{}: not a pid", holder_file.display()))?;
    Ok(Memory {
        daemon: proc_memory(daemon)?,
        holder: proc_memory(holder)?,
    })
}

fn proc_memory(pid: u32) -> Result<ProcMemory> {
    let status = read_trimmed(&format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let value = line.split_whitespace().next().unwrap_or("");
        value
            .parse()
            .with_context(|| format!("/proc/{pid}/status {name} {value:?}"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(ProcMemory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        fds,
        threads: field("Threads:")?,
    })
}

/// Memory with `n` running pods (each container has run one ExecSync), then after removal.
fn memory_with_pods(node: &Node, cri: &Cri, n: usize) -> Result<(Memory, Memory)> {
    let spec = ContainerSpec::shell("idle", BUSYBOX, "exec sleep 3600");
    let pods: Vec<Pod<'_>> = (0..n)
        .map(|_| cri.run_pod(&PodSpec::new("bench-rss", "bench")))
        .collect::<Result<_>>()?;
    let ctrs: Vec<Container<'_>> = pods
        .iter()
        .map(|pod| pod.start_container(&spec))
        .collect::<Result<_>>()?;
    for ctr in &ctrs {
        let out = ctr.sh("/bin/true")?;
        ensure!(out.exit_code == 0, "exec in {} failed: {out:?}", ctr.id());
    }
    std::thread::sleep(Duration::from_secs(1));
    let loaded = memory_now(node)?;
    drop(ctrs);
    drop(pods);
    std::thread::sleep(Duration::from_secs(2));
    Ok((loaded, memory_now(node)?))
}

// ---------------------------------------------------------------------------- report

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// p50 and p99 of unsorted samples.
fn p50_p99(samples: &[u64]) -> (u64, u64) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    (quantile(&sorted, 0.50), quantile(&sorted, 0.99))
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// One table row: plain p50/p99, driftguard p50/p99, ratios.
fn row(label: &str, plain: &[u64], dg: &[u64], unit: &str, scale: f64) -> String {
    let (p, d) = (p50_p99(plain), p50_p99(dg));
    let f = |v: u64| v as f64 / scale;
    format!(
        "| {label} | {:.1} / {:.1} {unit} | {:.1} / {:.1} {unit} | {:.3} / {:.3} |\n",
        f(p.0),
        f(p.1),
        f(d.0),
        f(d.1),
        ratio(d.0, p.0),
        ratio(d.1, p.1)
    )
}

fn header(args: &Args, node: &Node, load_before: &str) -> Result<String> {
    let cpu = read_trimmed("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::from("# driftguard end-to-end benchmark\n\n");
    let _ = writeln!(s, "date: {}", utc_now());
    let _ = writeln!(
        s,
        "machine: {cpus} CPUs, {cpu}; kernel {}",
        read_trimmed("/proc/sys/kernel/osrelease")?
    );
    let _ = writeln!(s, "load average before: {load_before}");
    let _ = writeln!(
        s,
        "containerd {}, runc {}; driftguard {}",
        node.runtime.containerd_version,
        node.runtime.runc.display(),
        args.driftguard.display()
    );
    let _ = writeln!(
        s,
        "instances: protected {}, plain {}\n",
        args.node_dev_dir, args.plain_dev_dir
    );
    Ok(s)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A pod start milestone: its label and how to pick it.
type Milestone = (&'static str, fn(&PodStart) -> Duration);

fn pod_table(pods: &[Vec<PodStart>; 2], n: usize) -> String {
    let mut s = format!(
        "## pod start, {n} pods per runtime, interleaved (milestones from RunPodSandbox)\n\n\
         | milestone | plain p50 / p99 | driftguard p50 / p99 | ratio p50 / p99 |\n\
         |---|---|---|---|\n"
    );
    let milestones: [Milestone; 4] = [
        ("sandbox ready", |p| p.sandbox),
        ("container created", |p| p.created),
        ("container started", |p| p.started),
        ("first output", |p| p.output),
    ];
    for (label, pick) in milestones {
        let micros = |side: &Vec<PodStart>| -> Vec<u64> {
            side.iter().map(|p| pick(p).as_micros() as u64).collect()
        };
        s += &row(label, &micros(&pods[0]), &micros(&pods[1]), "ms", 1000.0);
    }
    s + "\n"
}

fn exec_table(execs: &ExecSamples, rounds: usize, per_round: usize) -> String {
    let mut s = format!(
        "## exec in a running busybox container, {rounds} rounds x {per_round} per runtime, \
         interleaved\n\n\
         | command | plain p50 / p99 | driftguard p50 / p99 | ratio p50 / p99 |\n\
         |---|---|---|---|\n"
    );
    s += &row(
        "fork+exec+wait /bin/true",
        &execs.exec[0],
        &execs.exec[1],
        "µs",
        1.0,
    );
    s += &row(
        "timer floor (`:` builtin)",
        &execs.floor[0],
        &execs.floor[1],
        "µs",
        1.0,
    );
    s + "\n"
}

fn memory_table(rows: &[(String, Memory)]) -> String {
    let mut s = String::from(
        "## daemon memory (protected node)\n\n\
         | state | daemon VmRSS / VmHWM | daemon fds / threads | fd holder VmRSS | holder fds |\n\
         |---|---|---|---|---|\n",
    );
    for (label, m) in rows {
        let _ = writeln!(
            s,
            "| {label} | {} / {} KiB | {} / {} | {} KiB | {} |",
            m.daemon.rss_kib,
            m.daemon.hwm_kib,
            m.daemon.fds,
            m.daemon.threads,
            m.holder.rss_kib,
            m.holder.fds
        );
    }
    s + "\n"
}

fn targets(execs: &ExecSamples) -> String {
    let (p, d) = (p50_p99(&execs.exec[0]), p50_p99(&execs.exec[1]));
    let (r50, r99) = (ratio(d.0, p.0), ratio(d.1, p.1));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    format!(
        "targets (cached verdicts): exec p50 ratio {r50:.3} <= 1.03: {}; exec p99 ratio \
         {r99:.3} <= 1.10: {}\n",
        verdict(r50 <= 1.03),
        verdict(r99 <= 1.10)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_exact_microseconds() {
        assert_eq!(
            parse_interval("1796401864.843932 1796401864.846383").unwrap(),
            2451
        );
        assert_eq!(parse_interval("9.999999 10.000001").unwrap(), 2);
        assert!(parse_interval("10.000001 9.999999").is_err());
        assert!(parse_interval("10.1 10.2").is_err());
        assert!(parse_interval("garbage").is_err());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p50_p99(&samples), (51, 99));
        assert_eq!(p50_p99(&[]), (0, 0));
    }
}
