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

/// The issue asks for 100,000 live handles across 10 processes "with the limit raised". Every
/// block costs the broker a descriptor, so the count is bounded by the hard RLIMIT_NOFILE the
/// broker inherits: this test holds 10,000 per process when the hard limit allows it, and as many
/// as it allows otherwise (this machine's hard limit is 20,000 and cannot be raised without
/// CAP_SYS_RESOURCE). Everything is released when the processes exit. (The clean error at the
/// descriptor limit is c_abi's `a_broker_out_of_descriptors_gives_1450`.)
#[test]
fn many_live_handles_across_ten_processes() {
    let _env = TestEnv::new();
    // SAFETY: getrlimit writes only to `limit`.
    let hard = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_max
    };
    let per_process = ((hard.saturating_sub(200)) / 10).min(10_000) as usize;
    eprintln!("hard RLIMIT_NOFILE {hard}: {per_process} handles in each of 10 processes");
    shalloc::broker_pid().unwrap();
    let (release_r, release_w) = common::pipe();
    let release_w_fd = std::os::fd::AsRawFd::as_raw_fd(&release_w);
    let mut children = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..10 {
        let (report_r, report_w) = common::pipe();
        let release_r = release_r.try_clone().unwrap();
        children.push(common::fork(move || {
            use std::io::{Read, Write};
            // SAFETY: closes a descriptor this child inherited and never uses.
            unsafe { libc::close(release_w_fd) };
            let me = Pid::current();
            let mut made = 0u32;
            for i in 0..per_process {
                if shalloc::alloc(&(i as u32).to_le_bytes(), me).is_err() {
                    break;
                }
                made += 1;
            }
            let mut report_w = report_w;
            let _ = report_w.write_all(&made.to_le_bytes());
            let mut wait = [0u8; 1];
            let _ = (&release_r).read(&mut wait);
            0
        }));
        reports.push(report_r);
    }
    let mut total = 0u64;
    for mut r in reports {
        let mut made = [0u8; 4];
        std::io::Read::read_exact(&mut r, &mut made).unwrap();
        assert_eq!(
            u32::from_le_bytes(made) as usize,
            per_process,
            "every child made all its handles"
        );
        total += u64::from(u32::from_le_bytes(made));
    }
    let listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(listing.broker.handles, total);
    assert_eq!(
        listing
            .tables
            .iter()
            .filter(|t| t.handles == per_process as u64)
            .count(),
        10
    );
    drop(release_w);
    drop(release_r);
    for child in children {
        assert_eq!(
            common::wait_exit(child, std::time::Duration::from_secs(60)),
            0
        );
    }
    common::wait_until(std::time::Duration::from_secs(10), || {
        shalloc::admin::listing(false)
            .unwrap()
            .unwrap()
            .broker
            .handles
            == 0
    });
}
