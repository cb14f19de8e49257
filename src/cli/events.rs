//! `driftguard events`: show recent alerts from the daemon's JSON lines file.
//!
//! The file is read from its end, so showing the last lines of a large file costs only those
//! lines. `--follow` polls the file for appended lines (and starts over when it is truncated
//! or replaced by rotation). Lines that are not alerts are shown raw, never dropped.
//!
//! Limits: following polls every 500 ms rather than using inotify.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use driftguard_policy::alerts::DEFAULT_EVENTS_FILE;
use driftguard_policy::DriftEvent;

/// `driftguard events` arguments.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// JSON lines file the daemon writes alerts to.
    #[arg(long, default_value = DEFAULT_EVENTS_FILE)]
    file: PathBuf,
    /// Keep printing alerts as they are appended.
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many recent alerts to show.
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    lines: usize,
    /// Print the raw JSON lines instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Runs `driftguard events`.
pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let mut file =
        File::open(&args.file).with_context(|| format!("{}: cannot open", args.file.display()))?;
    for line in last_lines(&mut file, args.lines)? {
        print_line(&line, args.json);
    }
    if args.follow {
        follow(&args.file, file, args.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The last `n` complete lines of `file`, read backwards in blocks; leaves the file positioned
/// at its end.
fn last_lines(file: &mut File, n: usize) -> anyhow::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    let end = file.seek(SeekFrom::End(0))?;
    let mut start = end;
    let mut buf = Vec::new();
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let next = start.saturating_sub(BLOCK);
        let mut chunk = vec![0u8; (start - next) as usize];
        file.seek(SeekFrom::Start(next))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = next;
    }
    file.seek(SeekFrom::Start(end))?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}

fn follow(path: &Path, file: File, json: bool) -> anyhow::Result<()> {
    let mut ino = file.metadata()?.ino();
    let mut reader = BufReader::new(file);
    let mut pending = String::new();
    loop {
        let mut chunk = String::new();
        let read = reader.read_line(&mut chunk)?;
        if read > 0 {
            pending.push_str(&chunk);
            if pending.ends_with('\n') {
                print_line(pending.trim_end(), json);
                pending.clear();
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(500));

        // Start over when the file was truncated or replaced (rotation).
        let pos = reader.stream_position()?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.ino() != ino || meta.len() < pos {
                let file = File::open(path)?;
                ino = file.metadata()?.ino();
                reader = BufReader::new(file);
                pending.clear();
            }
        }
    }
}

fn print_line(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    if let Ok(event) = serde_json::from_str::<DriftEvent>(line) {
        let sev = serde_json::to_value(event.severity).unwrap_or_default();
        let sev = sev.as_str().unwrap_or("?").to_uppercase();
        println!("{} {sev:<4} {}", event.time, event.summary());
        return;
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) if v.get("suppressed").is_some() => {
            let time = v.get("time").and_then(|t| t.as_str()).unwrap_or("?");
            let n = v.get("suppressed").and_then(|n| n.as_u64()).unwrap_or(0);
            println!("{time} LOW  {n} alerts suppressed (queue full)");
        }
        _ => println!("{line}"),
    }
}
