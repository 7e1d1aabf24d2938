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

/// A child that never calls shalloc: its table can only be filled by others, and the broker
/// holds every block in it.
fn silent_child() -> (libc::pid_t, std::fs::File) {
    let (release_r, release_w) = common::pipe();
    let release_w_fd = std::os::fd::AsRawFd::as_raw_fd(&release_w);
    let child = common::fork(move || {
        // SAFETY: closes a descriptor this child inherited and never uses.
        unsafe { libc::close(release_w_fd) };
        let mut wait = [0u8; 1];
        let _ = std::io::Read::read(&mut &release_r, &mut wait);
        0
    });
    (child, release_w)
}

/// The user's total counts the blocks the broker holds: handles put into tables whose owners
/// have not taken them (here, processes that never call shalloc). Blocks a process holds in its
/// own table cost the broker nothing and count against that table's limit and the process's own
/// descriptor limit instead.
#[test]
fn the_users_total_is_enforced_across_tables() {
    let _env = limited_env();
    let me = Pid::current();
    let (a, release_a) = silent_child();
    let (b, release_b) = silent_child();
    let (a_pid, b_pid) = (Pid::from_raw(a as u32), Pid::from_raw(b as u32));
    let in_a: Vec<_> = (0..4)
        .map(|_| shalloc::alloc(b"a", a_pid).unwrap())
        .collect();
    // B's table takes the total to 8, the limit, with both tables below their own limit of 5.
    for _ in 0..4 {
        shalloc::alloc(b"b", b_pid).unwrap();
    }
    let err = shalloc::alloc(b"b", b_pid).unwrap_err();
    assert!(matches!(err, Error::TooManyHandles { .. }), "{err}");
    assert_eq!(err.code(), 1450);
    assert!(
        matches!(
            shalloc::alloc(b"a", a_pid),
            Err(Error::TooManyHandles { .. })
        ),
        "so is a 9th in the other table"
    );
    // Our own table is ours to fill, up to its own limit.
    let own: Vec<_> = (0..5).map(|_| shalloc::alloc(b"p", me).unwrap()).collect();
    assert_eq!(own.len(), 5);
    // A free makes room; so does a process's exit, which closes its table.
    shalloc::free(in_a[0], a_pid).unwrap();
    shalloc::alloc(b"b", b_pid).unwrap();
    assert!(shalloc::alloc(b"a", a_pid).is_err());
    drop(release_b);
    assert_eq!(common::wait_exit(b, std::time::Duration::from_secs(10)), 0);
    common::wait_until(std::time::Duration::from_secs(5), || {
        shalloc::alloc(b"a", a_pid).is_ok()
    });
    drop(release_a);
    assert_eq!(common::wait_exit(a, std::time::Duration::from_secs(10)), 0);
}

/// 100,000 live handles across 10 processes. Each process holds the blocks of its own table
/// itself, so the 10,000 descriptors each one needs count against its own RLIMIT_NOFILE (raised
/// to the hard limit here when the soft one is lower), not against the broker's: the broker holds
/// a few descriptors per process whatever the number of handles. Everything is released when the
/// processes exit. (The clean error at the broker's descriptor limit is c_abi's
/// `a_broker_out_of_descriptors_gives_1450`.)
#[test]
fn many_live_handles_across_ten_processes() {
    let _env = TestEnv::new();
    let per_process = 10_000usize;
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    let soft = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    };
    assert!(
        soft >= per_process as u64 + 100,
        "this test needs an RLIMIT_NOFILE of {} per process; the hard limit is {soft}",
        per_process + 100
    );
    let broker = shalloc::broker_pid().unwrap().as_raw();
    let broker_fds = || {
        std::fs::read_dir(format!("/proc/{broker}/fd"))
            .unwrap()
            .count()
    };
    let broker_fds_before = broker_fds();
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
    assert_eq!(total, 100_000);
    assert_eq!(listing.broker.handles, total);
    let broker_fds_during = broker_fds();
    eprintln!(
        "broker descriptors: {broker_fds_before} before, {broker_fds_during} with 100,000 handles"
    );
    assert!(
        broker_fds_during < broker_fds_before + 100,
        "the broker holds {broker_fds_during} descriptors for 10 processes"
    );
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
