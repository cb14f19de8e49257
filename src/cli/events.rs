//! `driftguard events`: show recent alerts from the daemon's JSON lines file.
//!
//! The file is read from its end, so showing the last lines of a large file costs only those
//! lines. `--follow` polls the file for appended lines. When the file is replaced by rotation,
//! it prints the rest of the old file first, then the rotated files it slept through, then the
//! new file from its start; when it is truncated in place, it starts over. Lines that are not
//! alerts are shown raw, never dropped.
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
    let mut current = Followed::new(file)?;
    loop {
        current.print_new(json)?;
        std::thread::sleep(Duration::from_millis(500));
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if meta.ino() != current.ino {
            // Rotated: the rest of the old file (written before it was renamed), then any file
            // rotated in between, oldest first, then the new file from its start.
            current.print_new(json)?;
            for between in rotated_since(path, current.ino) {
                if let Ok(file) = File::open(&between) {
                    Followed::new(file)?.print_new(json)?;
                }
            }
            current = Followed::new(File::open(path)?)?;
        } else if meta.len() < current.reader.stream_position()? {
            // Truncated in place (copy-truncate): start over.
            current = Followed::new(File::open(path)?)?;
        }
    }
}

/// A file being followed: where it was read up to, and a line not yet complete.
struct Followed {
    ino: u64,
    reader: BufReader<File>,
    pending: String,
}

impl Followed {
    fn new(file: File) -> anyhow::Result<Followed> {
        Ok(Followed {
            ino: file.metadata()?.ino(),
            reader: BufReader::new(file),
            pending: String::new(),
        })
    }

    /// Prints every complete line up to the end of the file.
    fn print_new(&mut self, json: bool) -> anyhow::Result<()> {
        loop {
            let mut chunk = String::new();
            if self.reader.read_line(&mut chunk)? == 0 {
                return Ok(());
            }
            self.pending.push_str(&chunk);
            if self.pending.ends_with('\n') {
                print_line(self.pending.trim_end(), json);
                self.pending.clear();
            }
        }
    }
}

/// The rotated files (`FILE.1`, `FILE.2`, …) newer than the one with inode `old`, oldest first:
/// those a follower slept through. When `old` is gone too, all of them.
fn rotated_since(path: &Path, old: u64) -> Vec<PathBuf> {
    let mut newer = Vec::new();
    for n in 1.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let rotated = PathBuf::from(name);
        match std::fs::metadata(&rotated) {
            Ok(meta) if meta.ino() == old => break,
            Ok(_) => newer.push(rotated),
            Err(_) => break,
        }
    }
    newer.reverse();
    newer
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
