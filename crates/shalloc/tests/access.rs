//! The access rule (DESIGN.md §2): a process may touch another's table only if both have the same
//! uids as the broker and the target is alive and dumpable. These tests change a child's uids, so
//! they need root; as another user they say so and do nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::TestEnv;
use procs::fork_with_channel;
use shalloc::{Error, Handle, Pid, alloc, alloc_zeroed, free, lock, lock_read_only, map_handle};

const NOBODY: libc::uid_t = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: this test changes uids and needs root");
    }
    root
}

fn handle(raw: u32) -> Handle {
    Handle::from_raw(raw).expect("a handle is never 0")
}

/// Fails unless every result is `AccessDenied` (code 5).
fn all_denied(results: Vec<(&str, shalloc::Result<()>)>) {
    for (what, result) in results {
        match result {
            Err(e @ Error::AccessDenied { .. }) => assert_eq!(e.code(), 5),
            other => panic!("{what}: expected AccessDenied, got {other:?}"),
        }
    }
}

/// Every call that reaches into `owner`'s table, with `h` a handle there and `other` a table the
/// caller may otherwise use.
fn every_call_on(
    owner: Pid,
    h: Handle,
    other: Pid,
    other_h: Handle,
) -> Vec<(&'static str, shalloc::Result<()>)> {
    vec![
        ("alloc", alloc(b"intruder", owner).map(drop)),
        ("alloc_zeroed", alloc_zeroed(16, owner).map(drop)),
        ("alloc_zeroed(0)", alloc_zeroed(0, owner).map(drop)),
        ("lock", lock(h, owner).map(drop)),
        ("lock_read_only", lock_read_only(h, owner).map(drop)),
        ("free", free(h, owner)),
        (
            "map_handle out of it",
            map_handle(h, owner, other).map(drop),
        ),
        (
            "map_handle into it",
            map_handle(other_h, other, owner).map(drop),
        ),
    ]
}

/// A child that made one successful call and then dropped to another uid (nobody) keeps its
/// connection, but the broker re-checks its credentials: it may not touch its parent's table, and
/// the parent may not touch its table.
#[test]
fn a_child_that_dropped_to_another_uid_is_kept_out_and_kept_in() {
    let _env = TestEnv::new();
    if !is_root() {
        return;
    }
    let parent = Pid::current();
    let parent_data = b"parent's secret".to_vec();
    let hp = alloc(&parent_data, parent).unwrap();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        let me = Pid::current();
        // One successful call as root: the connection is open and the child has a table.
        let hc = alloc(b"child's own", me).unwrap();
        end.send(hc.as_raw());
        // SAFETY: setgroups/setgid/setuid take plain values; the child changes only itself.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(NOBODY), 0);
            assert_eq!(libc::setuid(NOBODY), 0);
            assert_eq!((libc::getuid(), libc::geteuid()), (NOBODY, NOBODY));
        }
        all_denied(every_call_on(parent, hp, me, hc));
        end.send(1);
        end.wait_closed();
        0
    });
    let hc = handle(end.recv());
    assert_eq!(end.recv(), 1, "the child's checks finished");
    // The child now runs as nobody: its table is closed to us.
    all_denied(every_call_on(child.pid(), hc, parent, hp));
    end.close();
    child.expect_success();
    // Nothing the child tried changed our table.
    assert_eq!(lock(hp, parent).unwrap().to_vec(), parent_data);
    free(hp, parent).unwrap();
}

/// A child that made itself non-dumpable keeps its parent out of its table, while its own calls,
/// on its own table and on the (dumpable) parent's, still work.
#[test]
fn a_non_dumpable_child_keeps_others_out_but_works_itself() {
    let _env = TestEnv::new();
    if !is_root() {
        return;
    }
    let parent = Pid::current();
    let hp = alloc(b"parent block", parent).unwrap();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        // SAFETY: prctl with integer arguments only.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), 0);
            assert_eq!(libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
        }
        let me = Pid::current();
        // Its own table.
        let hc = alloc(b"child's own", me).unwrap();
        assert_eq!(lock(hc, me).unwrap().to_vec(), b"child's own");
        let dup = map_handle(hc, me, me).unwrap();
        free(dup, me).unwrap();
        // The parent's table.
        let v = lock(hp, parent).unwrap();
        assert_eq!(v.to_vec(), b"parent block");
        v.write_at(0, b"PARENT").unwrap();
        let up = alloc(b"put into the parent", parent).unwrap();
        let mapped = map_handle(hc, me, parent).unwrap();
        end.send(hc.as_raw());
        end.send(up.as_raw());
        end.send(mapped.as_raw());
        // Wait until the parent has tried (and failed) to reach in.
        assert_eq!(end.recv(), 1);
        assert_eq!(
            lock(hc, me).unwrap().to_vec(),
            b"child's own",
            "the parent got in"
        );
        free(hc, me).unwrap();
        end.send(2);
        end.wait_closed();
        0
    });
    let hc = handle(end.recv());
    let up = handle(end.recv());
    let mapped = handle(end.recv());
    all_denied(every_call_on(child.pid(), hc, parent, hp));
    // What the child put into our table, and the block it mapped to us, are ours to use.
    assert_eq!(lock(up, parent).unwrap().to_vec(), b"put into the parent");
    let v = lock(mapped, parent).unwrap();
    assert_eq!(v.to_vec(), b"child's own");
    assert_eq!(lock(hp, parent).unwrap().to_vec(), b"PARENT block");
    end.send(1);
    assert_eq!(end.recv(), 2);
    end.close();
    child.expect_success();
    for h in [up, mapped, hp] {
        free(h, parent).unwrap();
    }
}

/// A child that only changes its saved uid (real and effective stay root) is still another
/// user's process for the rule: all three uids must match.
#[test]
fn a_child_with_a_different_saved_uid_is_kept_out() {
    let _env = TestEnv::new();
    if !is_root() {
        return;
    }
    let parent = Pid::current();
    let hp = alloc(b"parent block", parent).unwrap();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        let me = Pid::current();
        let hc = alloc(b"child's own", me).unwrap();
        end.send(hc.as_raw());
        // real nobody, effective root, saved nobody... then effective back to root keeps two
        // slots different from the broker's uid.
        // SAFETY: setresuid takes plain values; the child changes only itself.
        unsafe {
            assert_eq!(libc::setresuid(0, 0, NOBODY), 0);
        }
        all_denied(every_call_on(parent, hp, me, hc));
        end.send(1);
        end.wait_closed();
        0
    });
    let hc = handle(end.recv());
    assert_eq!(end.recv(), 1);
    all_denied(every_call_on(child.pid(), hc, parent, hp));
    end.close();
    child.expect_success();
    assert_eq!(lock(hp, parent).unwrap().to_vec(), b"parent block");
    free(hp, parent).unwrap();
}
