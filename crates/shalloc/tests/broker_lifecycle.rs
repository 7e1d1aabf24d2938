//! The broker's life (DESIGN.md §2): started on demand and detached, replaced after it dies
//! without stale handles reaching new blocks, and never started in a runtime directory that
//! somebody else could control.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::TestEnv;
use procs::Child;
use shalloc::{Error, Handle, Pid, alloc, broker_pid, free, lock, map_handle};

fn set_runtime_dir(dir: &Path) {
    // SAFETY: nextest runs each test alone in its process, and these tests call this before they
    // start any thread.
    unsafe { std::env::set_var(shalloc::RUNTIME_DIR_ENV, dir) };
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Fails unless `r` is `BrokerUnavailable` (code 1062).
fn unavailable<T: std::fmt::Debug>(r: shalloc::Result<T>, what: &str) {
    match r {
        Err(e @ Error::BrokerUnavailable { .. }) => assert_eq!(e.code(), 1062),
        other => panic!("{what}: expected BrokerUnavailable, got {other:?}"),
    }
}

/// Removes a path when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn broker_started_on_demand_is_detached_and_reported() {
    let env = TestEnv::new();
    assert!(env.running_broker().is_none());
    let pid = broker_pid().unwrap();
    assert_eq!(env.running_broker(), Some(pid.as_raw()));
    assert_eq!(procs::brokers_serving(&env.dir), vec![pid.as_raw()]);
    // Not our child (no zombie for us to reap, nothing for our waits to find) and in another
    // session.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let (ppid, sid): (u32, u32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id(), "the broker is the test's child");
    // SAFETY: getsid(0) asks about the calling process only.
    let our_sid = unsafe { libc::getsid(0) } as u32;
    assert_ne!(sid, our_sid, "the broker stayed in the test's session");
    // Its directory is private.
    let mode = std::fs::metadata(&env.dir).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

#[test]
fn the_broker_outlives_the_client_that_started_it() {
    let env = TestEnv::new();
    let me = Pid::current();
    let (mut r, w) = common::pipe();
    let mut child = Child::fork(|| {
        // The child is the first caller: it starts the broker and leaves a block in our table.
        let h = alloc(b"left by the starter", me).unwrap();
        let mut w = &w;
        std::io::Write::write_all(&mut w, &h.as_raw().to_ne_bytes()).unwrap();
        0
    });
    drop(w);
    let h = Handle::from_raw(procs::recv_u32(&mut r)).unwrap();
    child.expect_success();
    let started = env
        .running_broker()
        .expect("the broker died with its starter");
    assert_eq!(broker_pid().unwrap().as_raw(), started);
    assert_eq!(lock(h, me).unwrap().to_vec(), b"left by the starter");
    free(h, me).unwrap();
}

#[test]
fn a_killed_broker_is_replaced_and_old_handles_fail_cleanly() {
    let env = TestEnv::new();
    let me = Pid::current();
    let old: Vec<(Handle, Vec<u8>)> = (0..16u8)
        .map(|i| {
            let bytes = vec![i; 64 + usize::from(i)];
            (alloc(&bytes, me).unwrap(), bytes)
        })
        .collect();
    let keep = alloc(b"mapped before the kill", me).unwrap();
    let v1 = lock(keep, me).unwrap();
    let v2 = lock(keep, me).unwrap();
    let first = broker_pid().unwrap();
    assert_eq!(env.running_broker(), Some(first.as_raw()));

    env.kill_broker();
    assert!(env.running_broker().is_none());

    // The next call starts a new broker and works.
    let fresh: Vec<(Handle, Vec<u8>)> = (0..16u8)
        .map(|i| {
            let bytes = vec![0x80 | i; 100];
            (alloc(&bytes, me).unwrap(), bytes)
        })
        .collect();
    let second = broker_pid().unwrap();
    assert_ne!(second, first, "the broker pid did not change");
    assert_eq!(env.running_broker(), Some(second.as_raw()));
    assert_eq!(procs::brokers_serving(&env.dir), vec![second.as_raw()]);

    // Handles of the old broker fail cleanly, never showing another block's bytes.
    let fresh_values: Vec<Handle> = fresh.iter().map(|(h, _)| *h).collect();
    for (h, _) in old.iter().chain([(keep, Vec::new())].iter()) {
        match lock(*h, me) {
            Err(Error::InvalidHandle { .. } | Error::NoSuchProcess { .. }) => {}
            Ok(v) => panic!(
                "stale handle {h} locked a block of the new broker ({} bytes: {:?}...); new handles {fresh_values:?}",
                v.len(),
                &v.to_vec()[..v.len().min(8)]
            ),
            Err(other) => panic!("lock of stale handle {h}: {other:?}"),
        }
        if !fresh_values.contains(h) {
            assert!(
                matches!(
                    free(*h, me),
                    Err(Error::InvalidHandle { .. } | Error::NoSuchProcess { .. })
                ),
                "free of stale handle {h}"
            );
            assert!(
                matches!(
                    map_handle(*h, me, me),
                    Err(Error::InvalidHandle { .. } | Error::NoSuchProcess { .. })
                ),
                "map of stale handle {h}"
            );
        }
    }
    // The new blocks are intact (no stale free reached them).
    for (h, bytes) in &fresh {
        assert_eq!(&lock(*h, me).unwrap().to_vec(), bytes);
        free(*h, me).unwrap();
    }

    // Views mapped before the kill keep their bytes, and still share them.
    assert_eq!(v1.to_vec(), b"mapped before the kill");
    v1.write_at(0, b"MAPPED").unwrap();
    assert_eq!(v2.to_vec(), b"MAPPED before the kill");
}

#[test]
fn a_child_forked_before_the_kill_reaches_the_new_broker() {
    let env = TestEnv::new();
    let parent = Pid::current();
    let h = alloc(b"x", parent).unwrap();
    let first = broker_pid().unwrap();
    env.kill_broker();
    let h2 = alloc(b"after", parent).unwrap();
    let second = broker_pid().unwrap();
    assert_ne!(first, second);
    let mut child = Child::fork(move || {
        assert_eq!(broker_pid().unwrap(), second);
        assert_eq!(lock(h2, parent).unwrap().to_vec(), b"after");
        assert!(lock(h, parent).is_err() || h == h2);
        0
    });
    child.expect_success();
    free(h2, parent).unwrap();
}

#[test]
fn a_runtime_dir_open_to_others_is_refused() {
    let env = TestEnv::new();
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    unavailable(alloc(b"x", Pid::current()), "alloc with a 0755 runtime dir");
    unavailable(broker_pid(), "broker_pid with a 0755 runtime dir");
    assert!(
        env.running_broker().is_none(),
        "a broker started in a 0755 dir"
    );
    assert!(procs::brokers_serving(&env.dir).is_empty());
    assert!(
        entries(&env.dir).is_empty(),
        "files were made: {:?}",
        entries(&env.dir)
    );
    // The client did not "repair" the directory.
    assert_eq!(std::fs::metadata(&env.dir).unwrap().mode() & 0o7777, 0o755);
    // Once it is private again, calls work: the refusal is not remembered.
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let h = alloc(b"x", Pid::current()).unwrap();
    free(h, Pid::current()).unwrap();
}

#[test]
fn a_runtime_dir_that_is_a_symlink_is_refused() {
    let env = TestEnv::new();
    let link = env.dir.with_file_name(format!(
        "{}-link",
        env.dir.file_name().unwrap().to_string_lossy()
    ));
    std::os::unix::fs::symlink(&env.dir, &link).unwrap();
    let _cleanup = RemoveOnDrop(link.clone());
    set_runtime_dir(&link);
    unavailable(
        alloc(b"x", Pid::current()),
        "alloc with a symlinked runtime dir",
    );
    assert!(
        env.running_broker().is_none(),
        "a broker started behind the symlink"
    );
    assert!(procs::brokers_serving(&link).is_empty());
    assert!(procs::brokers_serving(&env.dir).is_empty());
    assert!(
        entries(&env.dir).is_empty(),
        "files were made: {:?}",
        entries(&env.dir)
    );
}

#[test]
fn a_runtime_dir_owned_by_another_user_is_refused() {
    let env = TestEnv::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: giving the directory away needs root");
        return;
    }
    std::os::unix::fs::chown(&env.dir, Some(65534), Some(65534)).unwrap();
    unavailable(
        alloc(b"x", Pid::current()),
        "alloc with another user's runtime dir",
    );
    assert!(env.running_broker().is_none());
    assert!(
        entries(&env.dir).is_empty(),
        "files were made: {:?}",
        entries(&env.dir)
    );
    std::os::unix::fs::chown(&env.dir, Some(0), Some(0)).unwrap();
}

#[test]
fn a_missing_runtime_dir_is_created_private() {
    let env = TestEnv::new();
    let nested = env.dir.join("a").join("b");
    // A second environment for the nested directory, so that its broker is killed (by pid) when
    // the test ends.
    let inner = TestEnv {
        dir: nested.clone(),
        target_dir: env.target_dir.clone(),
    };
    set_runtime_dir(&nested);
    let h = alloc(b"x", Pid::current()).unwrap();
    assert_eq!(std::fs::metadata(&nested).unwrap().mode() & 0o7777, 0o700);
    let pid = broker_pid().unwrap();
    assert_eq!(inner.running_broker(), Some(pid.as_raw()));
    assert!(env.running_broker().is_none());
    free(h, Pid::current()).unwrap();
}
