//! Privileged test: a container whose exec arguments live in memory that blocks every read (a
//! page behind a `userfaultfd` nobody serves) stalls at most its own notify fd. Another
//! container's decisions that need the runtime (hashing a dropped file) still come within
//! seconds.
//!
//! The attacker needs `userfaultfd` and, with `vm.unprivileged_userfaultfd = 0`,
//! `CAP_SYS_PTRACE`; the bundle is given both.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use driftguard_policy::{Outcome, VerdictClass};
use support::{Bundle, Running};

const ATTACK: &str = "cp /bin/busybox /root/evil; echo x >> /root/evil; chmod 755 /root/evil; \
                      /bin/xat uffd-exec /root/evil 4";

const VICTIM: &str = r#"
for i in 1 2 3; do
  cp /bin/busybox /root/d$i; echo $i >> /root/d$i; chmod 755 /root/d$i
  /root/d$i true; echo "drift-$i-rc=$?"
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_memory_blocks_reads_stalls_only_itself() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let attacker = Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", ATTACK])
        .expect("attacker bundle");
    let config = support::grant(&attacker, "CAP_SYS_PTRACE", "userfaultfd").expect("grant");
    support::write_config(&attacker, &config).expect("config");
    attacker.start_detached().expect("attacker started");
    // Four decisions of dropped files whose argv blocks: as many as the runtime has workers,
    // and more.
    std::thread::sleep(Duration::from_secs(2));

    // The victim runs on a plain thread: the runtime's workers are what is under test.
    let victim =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", VICTIM]).expect("victim bundle");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = victim.run();
        let _ = tx.send(out.map(|o| support::text(&o)));
        drop(victim);
    });
    let output = rx
        .recv_timeout(Duration::from_secs(40))
        .expect("the other container's decisions stalled behind the blocked reads")
        .expect("runc run");
    for i in 1..=3 {
        support::expect_line(&output, &format!("drift-{i}-rc=126"));
    }
    // The attack was in place: the attacker's execs still wait for their answers (a kernel
    // without userfaultfd would have let them fail at once, and this test prove nothing).
    let pid = attacker.init_pid().expect("attacker pid");
    assert!(
        waiting_in_seccomp(pid) > 0,
        "no attacker exec waits for the supervisor: the blocking read was never set up"
    );
    drop(attacker);
    let events = supervisor.drain_events();
    for i in 1..=3 {
        let path = format!("/root/d{i}");
        assert!(
            events.iter().any(|e| e.path == path
                && e.outcome == Outcome::Deny
                && e.class == Some(VerdictClass::NewFile)),
            "no deny event for {path}: {events:#?}"
        );
    }
}

/// Processes in the pid namespace of `pid` that wait for a seccomp notification's answer.
fn waiting_in_seccomp(pid: u32) -> usize {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let target = ns(&pid.to_string());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|p| p.parse::<u32>().is_ok() && ns(p).is_some() && ns(p) == target)
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/wchan"))
                .is_ok_and(|w| w.starts_with("seccomp_do_user_notification"))
        })
        .count()
}
