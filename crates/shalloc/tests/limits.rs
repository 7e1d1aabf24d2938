//! The broker's limits: a clear error at each, nothing lost, and service again once there is room.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestEnv;
use shalloc::{Error, Pid};

/// A TestEnv whose broker (started on demand, so it inherits our environment) has low limits.
fn limited_env() -> TestEnv {
    let env = TestEnv::new();
    // SAFETY: nextest runs this test alone in its process and no thread has started yet.
    unsafe {
        std::env::set_var("SHALLOC_MAX_BLOCK", "1000");
        std::env::set_var("SHALLOC_MAX_HANDLES_PER_TABLE", "5");
        std::env::set_var("SHALLOC_MAX_HANDLES", "8");
    }
    env
}

#[test]
fn blocks_over_the_size_limit_are_refused_before_any_memory_is_used() {
    let _env = limited_env();
    let me = Pid::current();
    assert_eq!(shalloc::broker_info().unwrap().max_block, 1000);
    let ok = shalloc::alloc(&[1u8; 1000], me).unwrap();
    match shalloc::alloc(&[1u8; 1001], me) {
        Err(
            e @ Error::TooLarge {
                size: 1001,
                max: 1000,
            },
        ) => assert_eq!(e.code(), 8),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        shalloc::alloc_zeroed(1 << 40, me),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        shalloc::lock(ok, me).unwrap().len(),
        1000,
        "nothing else changed"
    );
}

#[test]
fn a_full_table_refuses_clearly_and_recovers() {
    let _env = limited_env();
    let me = Pid::current();
    let handles: Vec<_> = (0..5)
        .map(|i| shalloc::alloc(&[i as u8], me).unwrap())
        .collect();
    let err = shalloc::alloc(b"sixth", me).unwrap_err();
    assert!(matches!(err, Error::TooManyHandles { .. }), "{err}");
    assert_eq!(err.code(), 1450);
    assert!(err.to_string().contains("5 handles"), "{err}");
    // Nothing acknowledged was lost.
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(shalloc::lock(*h, me).unwrap().to_vec(), [i as u8]);
    }
    // map_handle into the full table is refused the same way.
    assert!(matches!(
        shalloc::map_handle(handles[0], me, me),
        Err(Error::TooManyHandles { .. })
    ));
    shalloc::free(handles[0], me).unwrap();
    let again = shalloc::alloc(b"room again", me).unwrap();
    assert_eq!(shalloc::lock(again, me).unwrap().to_vec(), b"room again");
}

#[test]
fn the_users_total_is_enforced_across_tables() {
    let _env = limited_env();
    let me = Pid::current();
    let mine: Vec<_> = (0..4).map(|_| shalloc::alloc(b"p", me).unwrap()).collect();
    // A child's table takes the total to 8, the limit, with both tables below their own limit.
    let (mut from_child, to_parent) = common::pipe();
    let (release_r, release_w) = common::pipe();
    let release_w_fd = std::os::fd::AsRawFd::as_raw_fd(&release_w);
    let child = common::fork(move || {
        use std::io::{Read, Write};
        // Our copy of the parent's write end would keep the release pipe open forever.
        // SAFETY: closes a descriptor this child inherited and never uses.
        unsafe { libc::close(release_w_fd) };
        let me = Pid::current();
        let mut to_parent = to_parent;
        for _ in 0..4 {
            if shalloc::alloc(b"c", me).is_err() {
                return 1;
            }
        }
        let code = match shalloc::alloc(b"c", me) {
            Err(Error::TooManyHandles { .. }) => 0,
            _ => 2,
        };
        let _ = to_parent.write_all(&[code]);
        let mut wait = [0u8; 1];
        let _ = (&release_r).read(&mut wait);
        code as i32
    });
    let mut verdict = [9u8; 1];
    std::io::Read::read_exact(&mut from_child, &mut verdict).unwrap();
    assert_eq!(verdict[0], 0, "the child's 9th handle overall is refused");
    assert!(
        matches!(shalloc::alloc(b"p", me), Err(Error::TooManyHandles { .. })),
        "so is ours"
    );
    drop(release_w);
    assert_eq!(
        common::wait_exit(child, std::time::Duration::from_secs(10)),
        0
    );
    // The child's exit closed its table: room again.
    common::wait_until(std::time::Duration::from_secs(5), || {
        shalloc::alloc(b"p", me).is_ok()
    });
    drop(mine);
}
