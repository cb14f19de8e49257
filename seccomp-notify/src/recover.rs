//! Unsticking execs a dead supervisor received but never answered.
//!
//! A notification the previous supervisor had received (`NOTIF_RECV`) but not answered stays
//! "sent" in the kernel as long as the fd holder keeps the listener open: nobody can receive it
//! again and its caller would wait forever. A stop signal interrupts that wait; the kernel
//! withdraws the notification and restarts the exec (`-ERESTARTSYS`), which produces a fresh
//! notification the new supervisor serves. So after taking the fds back, the supervisor stops
//! and continues each task of the container that waits in `seccomp_do_user_notification`.
//!
//! Invariants: only tasks in the pid namespace of a served container's init are touched; a task
//! is continued as soon as it has stopped (or after 200 ms).
//!
//! Limits: a parent that waits with `WUNTRACED` sees one stop/continue of the child; a task
//! that was already stopped by someone else is continued too.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tracing::info;

/// The kernel function a task waits in while its exec is being decided.
const WAIT_CHANNEL: &str = "seccomp_do_user_notification";

fn pid_ns(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether a `wchan` symbol names [`WAIT_CHANNEL`]: the compiler may have cloned the function
/// under a suffixed name (`seccomp_do_user_notification.isra.0`, `.constprop.0`, ...).
fn is_wait_channel(wchan: &str) -> bool {
    let wchan = wchan.trim();
    wchan == WAIT_CHANNEL
        || wchan
            .strip_prefix(WAIT_CHANNEL)
            .is_some_and(|suffix| suffix.starts_with('.'))
}

fn waiting_in_notification(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| is_wait_channel(&w))
    })
}

fn is_stopped(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
}

/// Stops and continues every process of the container of `init_pid` that waits for an exec
/// decision. Returns how many were kicked.
pub fn kick_waiting_execs(init_pid: i32) -> usize {
    let Some(ns) = pid_ns(init_pid) else { return 0 };
    let Ok(entries) = std::fs::read_dir(Path::new("/proc")) else {
        return 0;
    };
    let mut kicked = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid_ns(pid) != Some(ns) || !waiting_in_notification(pid) {
            continue;
        }
        let Some(target) = Pid::from_raw(pid) else {
            continue;
        };
        if kill_process(target, Signal::STOP).is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while !is_stopped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = kill_process(target, Signal::CONT);
        kicked += 1;
    }
    if kicked > 0 {
        info!(
            init_pid,
            kicked, "restarted execs left unanswered by the previous supervisor"
        );
    }
    kicked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_channel_matches_compiler_clones_only() {
        assert!(is_wait_channel("seccomp_do_user_notification"));
        assert!(is_wait_channel("seccomp_do_user_notification.isra.0\n"));
        assert!(is_wait_channel("seccomp_do_user_notification.constprop.0"));
        assert!(!is_wait_channel("seccomp_do_user_notification_x"));
        assert!(!is_wait_channel("do_wait"));
        assert!(!is_wait_channel("0"));
    }
}
