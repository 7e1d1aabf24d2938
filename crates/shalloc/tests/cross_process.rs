//! Hand-offs between processes (DESIGN.md §1, "Cross-process, both directions work", and what a
//! process's exit does to tables): forked children synchronised over pipes, and separately started
//! `shalloc` executables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::process::Command;

use common::TestEnv;
use procs::{Child, fork_with_channel};
use shalloc::{Error, Handle, Pid, alloc, free, lock, map_handle};

fn handle(raw: u32) -> Handle {
    Handle::from_raw(raw).expect("a handle is never 0")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Model 2: the parent allocates into its own table; a child locks with the parent's pid and
/// writes the answer; the parent reads it.
#[test]
fn child_locks_the_parents_block_and_its_writes_are_seen() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let question = pattern(50_000, 7);
    let h = alloc(&question, me).unwrap();
    let q = question.clone();
    let mut child = Child::fork(move || {
        let v = lock(h, me).unwrap();
        assert_eq!(v.to_vec(), q, "the child saw other bytes");
        v.write_at(0, b"answer from the child").unwrap();
        0
    });
    child.expect_success();
    let v = lock(h, me).unwrap();
    let bytes = v.to_vec();
    assert_eq!(&bytes[..21], b"answer from the child");
    assert_eq!(&bytes[21..], &question[21..]);
    free(h, me).unwrap();
}

/// Model 1: the parent allocates into a running child's table and sends the handle; the child
/// locks and frees it with its own pid; afterwards the handle is gone for the parent too.
#[test]
fn parent_allocs_into_a_live_childs_table_and_the_child_frees_it() {
    let _env = TestEnv::new();
    let data = pattern(10_000, 9);
    let expected = data.clone();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        let me = Pid::current();
        let h = handle(end.recv());
        let v = lock(h, me).unwrap();
        assert_eq!(v.to_vec(), expected);
        free(h, me).unwrap();
        assert!(matches!(free(h, me), Err(Error::InvalidHandle { .. })));
        // The view outlives the freed handle here too.
        assert_eq!(v.to_vec(), expected);
        end.send(1);
        end.wait_closed();
        0
    });
    let h = alloc(&data, child.pid()).unwrap();
    end.send(h.as_raw());
    assert_eq!(end.recv(), 1);
    // The child is alive and has freed the handle: it is gone from its table.
    match lock(h, child.pid()) {
        Err(Error::InvalidHandle { .. }) => {}
        other => panic!("lock of a handle the child freed: expected InvalidHandle, got {other:?}"),
    }
    assert!(matches!(
        free(h, child.pid()),
        Err(Error::InvalidHandle { .. })
    ));
    end.close();
    child.expect_success();
}

/// A handle the parent put into a live child's table can be locked by the parent with the
/// child's pid (the child's table is readable to the same user).
#[test]
fn parent_locks_and_frees_in_a_live_childs_table() {
    let _env = TestEnv::new();
    let (mut child, mut end) = fork_with_channel(|mut end| {
        let me = Pid::current();
        let h = alloc(b"in the child's own table", me).unwrap();
        end.send(h.as_raw());
        end.wait_closed();
        // The parent freed it meanwhile.
        assert!(matches!(lock(h, me), Err(Error::InvalidHandle { .. })));
        0
    });
    let h = handle(end.recv());
    assert_eq!(
        lock(h, child.pid()).unwrap().to_vec(),
        b"in the child's own table"
    );
    let mine = map_handle(h, child.pid(), Pid::current()).unwrap();
    free(h, child.pid()).unwrap();
    end.close();
    child.expect_success();
    // The duplicate in our table outlives the child and its table.
    assert_eq!(
        lock(mine, Pid::current()).unwrap().to_vec(),
        b"in the child's own table"
    );
    free(mine, Pid::current()).unwrap();
}

/// A handle a child allocated into its parent's table stays valid after the child exits.
#[test]
fn handle_a_child_put_in_the_parents_table_outlives_the_child() {
    let _env = TestEnv::new();
    let parent = Pid::current();
    let data = pattern(70_000, 11);
    let expected = data.clone();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        let h = alloc(&data, parent).unwrap();
        end.send(h.as_raw());
        0
    });
    let h = handle(end.recv());
    child.expect_success(); // exited and reaped
    assert_eq!(lock(h, parent).unwrap().to_vec(), expected);
    free(h, parent).unwrap();
    assert!(matches!(free(h, parent), Err(Error::InvalidHandle { .. })));
}

/// When a process exits its table is closed: every handle in it goes, at the exit (before the
/// parent reaps it), and the table cannot be reached any more.
#[test]
fn a_processs_table_is_closed_when_it_exits() {
    let env = TestEnv::new();
    let parent = Pid::current();
    let mine = alloc(b"the parent's own", parent).unwrap();
    let broker = shalloc::broker_pid().unwrap().as_raw();
    let before = procs::broker_handles();
    let (mut child, mut end) = fork_with_channel(|mut end| {
        let me = Pid::current();
        for i in 0..3u8 {
            let h = alloc(&[i; 100], me).unwrap();
            end.send(h.as_raw());
        }
        end.wait_closed();
        0
    });
    let handles: Vec<Handle> = (0..3).map(|_| handle(end.recv())).collect();
    // One more, put there by the parent.
    let from_parent = alloc(b"from the parent", child.pid()).unwrap();
    assert_eq!(procs::table_handles(child.pid()), Some(4));
    assert_eq!(procs::broker_handles(), before + 4);
    assert_eq!(lock(handles[1], child.pid()).unwrap().to_vec(), [1u8; 100]);
    end.close();
    // Exited, not reaped: the broker drops the table when it sees the exit (asynchronously).
    child.wait_until_zombie();
    common::wait_until(procs::LIMIT, || procs::table_handles(child.pid()).is_none());
    assert_eq!(
        procs::broker_handles(),
        before,
        "the child's handles are still counted"
    );
    for h in handles.iter().copied().chain([from_parent]) {
        match lock(h, child.pid()) {
            Err(Error::AccessDenied { .. } | Error::InvalidHandle { .. }) => {}
            other => panic!("lock({h}) in a zombie's table: got {other:?}"),
        }
    }
    child.expect_success(); // reaped now
    for h in handles.iter().copied().chain([from_parent]) {
        match lock(h, child.pid()) {
            Err(Error::NoSuchProcess { .. } | Error::InvalidHandle { .. }) => {}
            other => panic!("lock({h}) in an exited child's table: got {other:?}"),
        }
    }
    assert_eq!(env.running_broker(), Some(broker));
    // Our own table is untouched by the child's exit.
    assert_eq!(lock(mine, parent).unwrap().to_vec(), b"the parent's own");
    free(mine, parent).unwrap();
}

/// A zombie (exited, not yet reaped) is no place for a new handle: access denied. Once reaped,
/// its pid names no process.
#[test]
fn alloc_into_a_zombie_is_access_denied_and_into_a_reaped_child_no_such_process() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"parent's", me).unwrap();
    let mut child = Child::fork(|| 0);
    child.wait_until_zombie();
    assert_eq!(procs::state(child.raw()), Some('Z'));
    for (what, result) in [
        ("alloc", alloc(b"x", child.pid()).map(drop)),
        (
            "alloc_zeroed",
            shalloc::alloc_zeroed(10, child.pid()).map(drop),
        ),
        ("map_handle", map_handle(h, me, child.pid()).map(drop)),
    ] {
        match result {
            Err(e @ Error::AccessDenied { .. }) => assert_eq!(e.code(), 5),
            other => panic!("{what} into a zombie: expected AccessDenied, got {other:?}"),
        }
    }
    assert_eq!(child.wait(), 0);
    for (what, result) in [
        ("alloc", alloc(b"x", child.pid()).map(drop)),
        ("lock", lock(h, child.pid()).map(drop)),
        ("free", free(h, child.pid())),
        ("map_handle", map_handle(h, me, child.pid()).map(drop)),
    ] {
        match result {
            Err(e @ Error::NoSuchProcess { .. }) => assert_eq!(e.code(), 87),
            other => panic!("{what} into a reaped child: expected NoSuchProcess, got {other:?}"),
        }
    }
    // Our handle survived every failed map.
    free(h, me).unwrap();
}

/// A child forked after the parent connected opens its own connection: the broker sees the child
/// as the caller (so its own table is its own even when it is closed to others), and the parent's
/// connection keeps working after the child used the library and exited.
#[test]
fn a_forked_child_uses_its_own_connection() {
    let _env = TestEnv::new();
    let parent = Pid::current();
    let h = alloc(b"parent block", parent).unwrap();
    let broker = shalloc::broker_pid().unwrap();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        // Non-dumpable: nobody else may touch this process's table. If the child spoke on its
        // parent's connection, the broker would take the parent for the caller and refuse.
        // SAFETY: prctl with integer arguments only.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
        let me = Pid::current();
        let own = alloc(b"child's own", me).unwrap();
        assert_eq!(lock(own, me).unwrap().to_vec(), b"child's own");
        assert_eq!(
            shalloc::broker_pid().unwrap(),
            broker,
            "the child found another broker"
        );
        let v = lock(h, parent).unwrap();
        assert_eq!(v.to_vec(), b"parent block");
        v.write_at(0, b"PARENT").unwrap();
        end.send(own.as_raw());
        end.wait_closed();
        free(own, me).unwrap();
        0
    });
    let own = handle(end.recv());
    // The parent is not allowed into the non-dumpable child's table: proof that the child's own
    // alloc above was made on a connection the broker knows to be the child's.
    assert!(
        matches!(lock(own, child.pid()), Err(Error::AccessDenied { .. })),
        "the parent reached into a non-dumpable child's table"
    );
    end.close();
    child.expect_success();
    // The parent's connection is intact: right answers, same broker.
    assert_eq!(lock(h, parent).unwrap().to_vec(), b"PARENT block");
    assert_eq!(shalloc::broker_pid().unwrap(), broker);
    for i in 0..20u8 {
        let x = alloc(&[i; 3], parent).unwrap();
        assert_eq!(lock(x, parent).unwrap().to_vec(), [i; 3]);
        free(x, parent).unwrap();
    }
    free(h, parent).unwrap();
}

/// Two children in a row, each inheriting the parent's connection, each working on its own.
#[test]
fn several_forked_children_one_after_another_each_work() {
    let _env = TestEnv::new();
    let parent = Pid::current();
    let h = alloc(&[0u8; 8], parent).unwrap();
    for i in 0..4u8 {
        let mut child = Child::fork(move || {
            let v = lock(h, parent).unwrap();
            v.write_at(usize::from(i), &[i + 1]).unwrap();
            let x = alloc(&[i], Pid::current()).unwrap();
            free(x, Pid::current()).unwrap();
            0
        });
        child.expect_success();
        let mut got = [0u8; 1];
        lock(h, parent)
            .unwrap()
            .read_at(usize::from(i), &mut got)
            .unwrap();
        assert_eq!(got[0], i + 1);
    }
    free(h, parent).unwrap();
}

fn shalloc_cmd(env: &TestEnv) -> Command {
    Command::new(env.bin())
}

/// The test allocates into its own table; a separately started `shalloc get` reads it exactly.
#[test]
fn cli_get_reads_a_block_from_the_tests_table_byte_exact() {
    let env = TestEnv::new();
    let me = Pid::current();
    // Every byte value, and larger than a pipe's buffer.
    let data: Vec<u8> = pattern(300_000, 0)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i < 256 { i as u8 } else { b })
        .collect();
    let h = alloc(&data, me).unwrap();

    let out = procs::run(
        shalloc_cmd(&env).args(["get", &h.to_string(), "--from", &me.to_string()]),
        None,
    );
    assert_eq!(out.code, 0, "shalloc get failed: {}", out.stderr);
    assert!(
        out.stdout == data,
        "shalloc get printed other bytes ({} bytes)",
        out.stdout.len()
    );

    let file = env.dir.join("got.bin");
    let out = procs::run(
        shalloc_cmd(&env)
            .args(["get", &h.as_raw().to_string(), "--from", &me.to_string()])
            .arg("-o")
            .arg(&file),
        None,
    );
    assert_eq!(out.code, 0, "shalloc get -o failed: {}", out.stderr);
    assert!(std::fs::read(&file).unwrap() == data, "the file differs");

    // --free closes the handle in our table after reading.
    let out = procs::run(
        shalloc_cmd(&env).args(["get", &h.to_string(), "--from", &me.to_string(), "--free"]),
        None,
    );
    assert_eq!(out.code, 0, "shalloc get --free failed: {}", out.stderr);
    assert!(out.stdout == data);
    assert!(matches!(lock(h, me), Err(Error::InvalidHandle { .. })));
    // And a second get of the freed handle fails.
    let out = procs::run(
        shalloc_cmd(&env).args(["get", &h.to_string(), "--from", &me.to_string()]),
        None,
    );
    assert_ne!(out.code, 0, "shalloc get of a freed handle succeeded");
    assert!(out.stdout.is_empty());
}

/// A separately started `shalloc put --to <test pid>` puts a file into the test's table and
/// exits; the handle outlives it, and the test locks and frees it.
#[test]
fn cli_put_into_the_tests_table_outlives_the_put_process() {
    let env = TestEnv::new();
    let me = Pid::current();
    let data = pattern(123_457, 3);
    let file = env.dir.join("put.bin");
    std::fs::write(&file, &data).unwrap();
    let out = procs::run(
        shalloc_cmd(&env)
            .args(["put", "--to", &me.to_string()])
            .arg(&file),
        None,
    );
    assert_eq!(out.code, 0, "shalloc put failed: {}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.trim().starts_with("0x"), "put printed {text:?}");
    let h: Handle = text.trim().parse().unwrap();
    // The put process has exited (run waited for it); its handle lives in our table.
    assert_eq!(lock(h, me).unwrap().to_vec(), data);
    free(h, me).unwrap();
    assert!(matches!(free(h, me), Err(Error::InvalidHandle { .. })));

    // From stdin, then `shalloc free` closes it in our table.
    let out = procs::run(
        shalloc_cmd(&env).args(["put", "--to", &me.to_string()]),
        Some(b"from stdin"),
    );
    assert_eq!(out.code, 0, "shalloc put (stdin) failed: {}", out.stderr);
    let h: Handle = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(lock(h, me).unwrap().to_vec(), b"from stdin");
    let out = procs::run(
        shalloc_cmd(&env).args(["free", &h.to_string(), "--from", &me.to_string()]),
        None,
    );
    assert_eq!(out.code, 0, "shalloc free failed: {}", out.stderr);
    assert!(matches!(lock(h, me), Err(Error::InvalidHandle { .. })));
    let out = procs::run(
        shalloc_cmd(&env).args(["free", &h.to_string(), "--from", &me.to_string()]),
        None,
    );
    assert_ne!(out.code, 0, "a second shalloc free succeeded");
}

/// `shalloc put` into a pid that names no process fails and prints no handle.
#[test]
fn cli_put_to_a_missing_process_fails() {
    let env = TestEnv::new();
    let out = procs::run(
        shalloc_cmd(&env).args(["put", "--to", "2147483632"]),
        Some(b"x"),
    );
    assert_ne!(out.code, 0);
    assert!(out.stdout.is_empty(), "printed {:?}", out.stdout);
    assert!(!out.stderr.is_empty());
}
