//! The contract of DESIGN.md §1 through the Rust API, on the calling process's own table: alloc,
//! lock, free, map, empty and zero-filled blocks, views that share bytes and outlive their handle,
//! read-only views, bounds, impossible process ids, the size limit and the Win32 error codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::os::fd::AsRawFd;

use common::TestEnv;
use procs::Child;
use shalloc::{
    Error, Handle, Pid, ViewError, alloc, alloc_zeroed, broker_info, free, lock, lock_read_only,
    map_handle,
};

fn is_invalid_handle<T: std::fmt::Debug>(r: shalloc::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidHandle { .. }))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn alloc_lock_free_round_trip_in_own_table() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let a = pattern(10_000, 1);
    let b = pattern(3, 2);
    let ha = alloc(&a, me).unwrap();
    let hb = alloc(&b, me).unwrap();
    assert_ne!(ha, hb, "two blocks got the same handle");
    for h in [ha, hb] {
        assert!(
            h.as_raw() != 0 && h.as_raw() < 1 << 31,
            "handle {h} is outside 1..2^31"
        );
    }
    let va = lock(ha, me).unwrap();
    let vb = lock(hb, me).unwrap();
    assert_eq!(va.len(), a.len());
    assert!(va.is_writable());
    assert_eq!(va.to_vec(), a);
    assert_eq!(vb.to_vec(), b);
    drop((va, vb));
    free(ha, me).unwrap();
    assert!(
        is_invalid_handle(lock(ha, me)),
        "a freed handle still locks"
    );
    // The other handle is unaffected by freeing the first.
    assert_eq!(lock(hb, me).unwrap().to_vec(), b);
    free(hb, me).unwrap();
}

#[test]
fn empty_block_allocs_locks_and_frees() {
    let _env = TestEnv::new();
    let me = Pid::current();
    for h in [alloc(&[], me).unwrap(), alloc_zeroed(0, me).unwrap()] {
        let v1 = lock(h, me).unwrap();
        let v2 = lock(h, me).unwrap();
        assert_eq!(v1.len(), 0);
        assert!(v1.is_empty());
        assert!(v1.to_vec().is_empty());
        assert!(!v1.as_ptr().is_null());
        assert_ne!(
            v1.as_ptr(),
            v2.as_ptr(),
            "two locks of an empty block share an address"
        );
        v1.read_at(0, &mut []).unwrap();
        v1.write_at(0, &[]).unwrap();
        assert!(matches!(
            v1.read_at(0, &mut [0u8; 1]),
            Err(ViewError::OutOfBounds { .. })
        ));
        assert!(matches!(
            v1.write_at(0, &[1]),
            Err(ViewError::OutOfBounds { .. })
        ));
        let ro = lock_read_only(h, me).unwrap();
        assert_eq!(ro.len(), 0);
        free(h, me).unwrap();
        assert!(is_invalid_handle(free(h, me)));
    }
}

#[test]
fn alloc_zeroed_gives_zeros() {
    let _env = TestEnv::new();
    let me = Pid::current();
    for len in [1, 7, 4095, 4096, 4097, 1 << 20] {
        let h = alloc_zeroed(len, me).unwrap();
        let v = lock(h, me).unwrap();
        assert_eq!(v.len(), len);
        assert!(
            v.to_vec().iter().all(|b| *b == 0),
            "a zeroed block of {len} has nonzero bytes"
        );
        // It is an ordinary writable block.
        v.write_at(len - 1, &[0xaa]).unwrap();
        assert_eq!(lock(h, me).unwrap().to_vec()[len - 1], 0xaa);
        free(h, me).unwrap();
    }
}

#[test]
fn two_locks_are_two_views_of_the_same_bytes() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(&pattern(8192, 3), me).unwrap();
    let v1 = lock(h, me).unwrap();
    let v2 = lock(h, me).unwrap();
    assert_ne!(v1.as_ptr(), v2.as_ptr(), "two locks gave the same address");
    v1.write_at(100, b"through one").unwrap();
    let mut got = [0u8; 11];
    v2.read_at(100, &mut got).unwrap();
    assert_eq!(&got, b"through one");
    v2.write_at(8192 - 5, b"other").unwrap();
    v1.read_at(8192 - 5, &mut got[..5]).unwrap();
    assert_eq!(&got[..5], b"other");
    // A read-only view and a later lock see both writes too.
    let ro = lock_read_only(h, me).unwrap();
    assert_eq!(ro.to_vec(), v1.to_vec());
    drop(v1);
    // Dropping one view leaves the other mapped and sharing.
    v2.write_at(0, b"after drop").unwrap();
    assert_eq!(&ro.to_vec()[..10], b"after drop");
    free(h, me).unwrap();
}

#[test]
fn free_leaves_live_views_usable() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let data = pattern(20_000, 4);
    let h = alloc(&data, me).unwrap();
    let v1 = lock(h, me).unwrap();
    let v2 = lock(h, me).unwrap();
    free(h, me).unwrap();
    assert!(is_invalid_handle(lock(h, me)), "lock after free must fail");
    assert_eq!(
        v1.to_vec(),
        data,
        "a view lost its bytes when the handle was freed"
    );
    v1.write_at(0, b"still writable").unwrap();
    let mut got = [0u8; 14];
    v2.read_at(0, &mut got).unwrap();
    assert_eq!(
        &got, b"still writable",
        "views of a freed handle stopped sharing"
    );
}

#[test]
fn double_free_is_invalid_handle() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"x", me).unwrap();
    free(h, me).unwrap();
    let err = free(h, me).unwrap_err();
    assert!(matches!(err, Error::InvalidHandle { .. }), "{err:?}");
    assert_eq!(err.code(), 6);
}

#[test]
fn unknown_handles_are_invalid() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let mine = alloc(b"mine", me).unwrap();
    let unknown = [
        1,
        2,
        3,
        4,
        0xfff,
        0x1_0000,
        0x7fff_fffc,
        0x7fff_ffff,
        0xffff_ffff,
    ]
    .into_iter()
    .filter(|v| *v != mine.as_raw())
    .map(|v| Handle::from_raw(v).unwrap());
    for h in unknown {
        assert!(is_invalid_handle(lock(h, me)), "lock({h}) did not fail");
        assert!(
            is_invalid_handle(lock_read_only(h, me)),
            "lock_read_only({h})"
        );
        assert!(is_invalid_handle(free(h, me)), "free({h}) did not fail");
        assert!(is_invalid_handle(map_handle(h, me, me)), "map_handle({h})");
    }
    // None of that touched the real handle.
    assert_eq!(lock(mine, me).unwrap().to_vec(), b"mine");
    free(mine, me).unwrap();
}

#[test]
fn impossible_and_absent_pids_are_no_such_process() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"real", me).unwrap();
    for raw in [0, 0x7fff_fff0, u32::MAX, 1 << 31] {
        let p = Pid::from_raw(raw);
        let no_such = |r: shalloc::Result<()>, what: &str| match r {
            Err(e @ Error::NoSuchProcess { .. }) => assert_eq!(e.code(), 87),
            other => panic!("{what} with pid {raw:#x}: expected NoSuchProcess, got {other:?}"),
        };
        no_such(alloc(b"x", p).map(drop), "alloc");
        no_such(alloc_zeroed(5, p).map(drop), "alloc_zeroed");
        no_such(lock(h, p).map(drop), "lock");
        no_such(lock_read_only(h, p).map(drop), "lock_read_only");
        no_such(free(h, p), "free");
        no_such(map_handle(h, p, me).map(drop), "map_handle from");
        no_such(map_handle(h, me, p).map(drop), "map_handle to");
    }
    // The handle survived every failed call.
    assert_eq!(lock(h, me).unwrap().to_vec(), b"real");
    free(h, me).unwrap();
}

#[test]
fn map_handle_own_to_own_gives_a_second_handle_to_the_same_block() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"original bytes", me).unwrap();
    let m = map_handle(h, me, me).unwrap();
    assert_ne!(h, m, "the duplicate has the original's value");
    let vh = lock(h, me).unwrap();
    let vm = lock(m, me).unwrap();
    assert_eq!(vm.to_vec(), b"original bytes");
    vm.write_at(0, b"ORIGINAL").unwrap();
    assert_eq!(
        vh.to_vec(),
        b"ORIGINAL bytes",
        "the duplicate is another block"
    );
    // The original stays open; freeing either leaves the other.
    free(h, me).unwrap();
    assert!(is_invalid_handle(lock(h, me)));
    assert_eq!(lock(m, me).unwrap().to_vec(), b"ORIGINAL bytes");
    // A duplicate of a duplicate, then the last frees.
    let m2 = map_handle(m, me, me).unwrap();
    assert!(m2 != m && m2 != h);
    free(m, me).unwrap();
    assert_eq!(lock(m2, me).unwrap().to_vec(), b"ORIGINAL bytes");
    free(m2, me).unwrap();
    assert!(is_invalid_handle(map_handle(m2, me, me)));
}

#[test]
fn read_only_view_refuses_writes_and_a_raw_write_faults() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"read only please", me).unwrap();
    let ro = lock_read_only(h, me).unwrap();
    assert!(!ro.is_writable());
    assert_eq!(ro.write_at(0, b"x"), Err(ViewError::ReadOnly));
    let mut got = [0u8; 4];
    ro.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"read");

    // A raw write through a read-only view's pointer must fault: try it in a child, which locks
    // read-only itself.
    let mut child = Child::fork(|| {
        let limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads the struct we pass; no core file for the expected crash.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
        let view = lock_read_only(h, me).unwrap();
        let ptr = view.as_ptr().cast_mut();
        // SAFETY: deliberately not sound: the page is mapped read-only, so this write must fault
        // and kill the child with SIGSEGV before it returns.
        unsafe { std::ptr::write_volatile(ptr, b'X') };
        0
    });
    assert_eq!(
        child.wait(),
        128 + libc::SIGSEGV,
        "a write through a read-only view did not die of SIGSEGV"
    );
    assert_eq!(ro.to_vec(), b"read only please", "the write went through");
    free(h, me).unwrap();
}

#[test]
fn read_at_and_write_at_check_bounds() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let data = pattern(100, 5);
    let h = alloc(&data, me).unwrap();
    let v = lock(h, me).unwrap();
    let oob = |offset, len| ViewError::OutOfBounds {
        offset,
        len,
        size: 100,
    };
    assert_eq!(v.read_at(99, &mut [0u8; 2]), Err(oob(99, 2)));
    assert_eq!(v.read_at(100, &mut [0u8; 1]), Err(oob(100, 1)));
    assert_eq!(v.read_at(0, &mut [0u8; 101]), Err(oob(0, 101)));
    assert_eq!(
        v.read_at(usize::MAX, &mut [0u8; 2]),
        Err(oob(usize::MAX, 2))
    );
    assert_eq!(v.write_at(99, b"ab"), Err(oob(99, 2)));
    assert_eq!(v.write_at(usize::MAX, b"a"), Err(oob(usize::MAX, 1)));
    assert_eq!(v.write_at(101, b""), Err(oob(101, 0)));
    assert_eq!(v.to_vec(), data, "a refused write changed the block");
    // The edges themselves are fine.
    v.read_at(100, &mut []).unwrap();
    v.write_at(98, b"yz").unwrap();
    let mut last = [0u8; 2];
    v.read_at(98, &mut last).unwrap();
    assert_eq!(&last, b"yz");
    let mut all = [0u8; 100];
    v.read_at(0, &mut all).unwrap();
    assert_eq!(&all[..98], &data[..98]);
    // A read-only view checks bounds too (and reports read-only before bounds for writes).
    let ro = lock_read_only(h, me).unwrap();
    assert_eq!(ro.read_at(99, &mut [0u8; 2]), Err(oob(99, 2)));
    assert_eq!(ro.write_at(0, b"a"), Err(ViewError::ReadOnly));
    free(h, me).unwrap();
}

#[test]
fn blocks_over_the_brokers_limit_are_too_large_and_allocate_nothing() {
    let env = TestEnv::new();
    let me = Pid::current();
    let max = broker_info().unwrap().max_block;
    assert_eq!(
        max,
        u64::from(u32::MAX),
        "the default limit is what a DWORD holds"
    );
    assert!(env.running_broker().is_some());
    let fds = procs::open_fds();
    let broker_handles = procs::broker_handles();
    let size = max + 1;
    let err = alloc_zeroed(size as usize, me).unwrap_err();
    match &err {
        Error::TooLarge { size: s, max: m } => assert_eq!((*s, *m), (size, max)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(err.code(), 8);
    assert_eq!(
        procs::open_fds(),
        fds,
        "the refused alloc left a descriptor open"
    );
    assert_eq!(
        procs::broker_handles(),
        broker_handles,
        "the broker got a block"
    );

    // `alloc` of a slice that large is refused the same way, before its bytes are read: the
    // slice is an inaccessible reservation, so touching it would crash.
    let len = size as usize;
    // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks touches no memory of ours.
    let reservation = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(reservation, libc::MAP_FAILED);
    // SAFETY: the slice covers exactly the reservation; the test relies on alloc never reading it
    // (a read faults, which fails the test loudly).
    let huge = unsafe { std::slice::from_raw_parts(reservation.cast::<u8>(), len) };
    let err = alloc(huge, me).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // SAFETY: unmapping the reservation made above, no longer referenced (`huge` is dead).
    unsafe { libc::munmap(reservation, len) };
    assert_eq!(procs::broker_handles(), broker_handles);
    // The client is still fine afterwards.
    let h = alloc(b"small", me).unwrap();
    free(h, me).unwrap();
}

#[test]
fn error_codes_are_the_win32_ones() {
    let _env = TestEnv::new();
    let me = Pid::current();
    // 6: an unknown handle.
    let h = alloc(b"x", me).unwrap();
    free(h, me).unwrap();
    let e = lock(h, me).unwrap_err();
    assert!(matches!(e, Error::InvalidHandle { .. }), "{e:?}");
    assert_eq!(e.code(), 6);
    // 87: a pid that names no process.
    let e = alloc(b"x", Pid::from_raw(0x7fff_fff0)).unwrap_err();
    assert!(matches!(e, Error::NoSuchProcess { .. }), "{e:?}");
    assert_eq!(e.code(), 87);
    // 8: too large.
    let max = broker_info().unwrap().max_block;
    let e = alloc_zeroed((max + 1) as usize, me).unwrap_err();
    assert_eq!(e.code(), 8);
    // 5: a zombie (exited, not reaped) child's table.
    let mut child = Child::fork(|| 0);
    child.wait_until_zombie();
    let e = alloc(b"x", child.pid()).unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    assert_eq!(e.code(), 5);
    assert_eq!(child.wait(), 0);
    // Every error says why in words.
    assert!(!e.to_string().is_empty());
}

#[test]
fn out_of_descriptors_is_too_many_handles_1450() {
    let _env = TestEnv::new();
    let me = Pid::current();
    // Connect first, so that the only descriptor the alloc below needs is the block's memfd.
    shalloc::broker_pid().unwrap();
    let mut child = Child::fork(|| {
        // The child's first call opens its own connection (never the parent's); make it while
        // there is room.
        shalloc::broker_pid().unwrap();
        let probe = std::fs::File::open("/dev/null").unwrap();
        // The lowest free descriptor number: a limit there leaves no room for one more.
        // SAFETY: fcntl(F_DUPFD) on an open descriptor; the duplicate is closed right away.
        let lowest = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD, 0) };
        assert!(lowest >= 0);
        // SAFETY: closing the duplicate made above, owned by nothing else.
        unsafe { libc::close(lowest) };
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let tight = libc::rlimit {
            rlim_cur: lowest as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
        let err = alloc(b"no room for a memfd", Pid::current()).unwrap_err();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
        assert!(matches!(err, Error::TooManyHandles { .. }), "{err:?}");
        assert_eq!(err.code(), 1450);
        // With room again, the same call works.
        let h = alloc(b"room again", Pid::current()).unwrap();
        free(h, Pid::current()).unwrap();
        drop(probe);
        0
    });
    child.expect_success();
    let h = alloc(b"parent unaffected", me).unwrap();
    free(h, me).unwrap();
}

#[test]
fn no_broker_reachable_is_broker_unavailable_1062() {
    let env = TestEnv::new();
    let missing = env.dir.join("no-such-shalloc");
    // SAFETY: nextest runs this test alone in its process and no thread has started yet.
    unsafe { std::env::set_var(shalloc::BROKER_ENV, &missing) };
    let err = alloc(b"x", Pid::current()).unwrap_err();
    assert!(matches!(err, Error::BrokerUnavailable { .. }), "{err:?}");
    assert_eq!(err.code(), 1062);
    assert!(env.running_broker().is_none());
}
