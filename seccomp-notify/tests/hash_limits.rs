//! The exec-path hash is bounded: a huge (sparse) file is refused before any read, a file that
//! grows past the limit while being read is refused, and a missed deadline stops the hashing.
//! The last test is privileged: busybox under real runc executing a 20 GiB sparse file.

mod support;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use driftguard_policy::Outcome;
use driftguard_seccomp::classify::{hash_bounded, hash_opened, MAX_HASHED_SIZE};
use rustix::fs::{self as rfs, Mode, OFlags};
use support::{Bundle, Running};

fn open_path(path: &std::path::Path) -> OwnedFd {
    rfs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).expect("open O_PATH")
}

#[test]
fn a_sparse_20_gib_file_is_refused_without_hashing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(20 << 30).expect("truncate to 20 GiB");
    let started = Instant::now();
    let err = hash_opened(&open_path(&path)).expect_err("huge file");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
    // Reading 20 GiB of zeros takes seconds; a refusal before the first read takes microseconds.
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    let just_over = dir.path().join("just-over");
    std::fs::File::create(&just_over)
        .expect("create")
        .set_len(MAX_HASHED_SIZE + 1)
        .expect("truncate");
    let err = hash_opened(&open_path(&just_over)).expect_err("one byte over");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
}

#[test]
fn small_files_hash_and_limits_are_enforced_while_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small");
    std::fs::write(&path, vec![7u8; 600 * 1024]).expect("write");
    let fd = open_path(&path);
    let hash = hash_opened(&fd).expect("hash");
    assert_eq!(hash, *blake3::hash(&vec![7u8; 600 * 1024]).as_bytes());

    let far = Instant::now() + Duration::from_secs(60);
    let err = hash_bounded(&fd, 1024, far).expect_err("over a small cap");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
    let past = Instant::now() - Duration::from_millis(1);
    let err = hash_bounded(&fd, MAX_HASHED_SIZE, past).expect_err("deadline passed");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_huge_sparse_file_gets_the_failure_policy_without_hashing() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let script = "truncate -s 20G /tmp/huge; chmod 755 /tmp/huge; /tmp/huge; echo huge-rc=$?; \
                  /bin/true; echo after-rc=$?";
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    assert!(output.lines().any(|l| l == "huge-rc=126"), "{output}");
    assert!(output.lines().any(|l| l == "after-rc=0"), "{output}");
    let events = supervisor.drain_events();
    let huge = events
        .iter()
        .find(|e| e.path.ends_with("/tmp/huge") || e.argv.first().is_some_and(|a| a == "/tmp/huge"))
        .expect("an event for /tmp/huge");
    assert_eq!(huge.outcome, Outcome::Deny, "{huge:#?}");
    // Refused by the size cap (EFBIG), not by the decision timeout after hashing for 2 s.
    let error = huge.error.as_deref().unwrap_or_default();
    assert!(error.contains("File too large"), "{huge:#?}");
}
