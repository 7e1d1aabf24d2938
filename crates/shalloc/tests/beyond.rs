//! What shalloc offers beyond Windows: frozen blocks, in-place fill, tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;

use common::TestEnv;
use shalloc::{Error, Pid, Token, ViewError};

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn handles_in_broker() -> u64 {
    shalloc::admin::listing(false)
        .unwrap()
        .map_or(0, |l| l.broker.handles)
}

/// The /proc/self/map_files entry of the mapping that starts at `addr`: a way to reopen the
/// block's file with whatever access the kernel allows.
fn map_file_of(addr: usize) -> std::path::PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let range = maps
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .find(|r| usize::from_str_radix(r.split('-').next().unwrap(), 16).unwrap() == addr)
        .expect("the view is in /proc/self/maps");
    std::path::PathBuf::from(format!("/proc/self/map_files/{range}"))
}

#[test]
fn a_frozen_block_cannot_be_written_by_any_route() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = shalloc::alloc_frozen(b"carved in stone", me).unwrap();
    assert!(matches!(shalloc::lock(h, me), Err(e @ Error::AccessDenied { .. }) if e.code() == 5));
    let view = shalloc::lock_read_only(h, me).unwrap();
    assert!(view.is_frozen());
    assert_eq!(
        view.frozen_bytes(),
        Some(&b"carved in stone"[..]),
        "safe zero-copy access"
    );
    assert_eq!(view.write_at(0, b"X"), Err(ViewError::ReadOnly));

    // mprotect cannot make the mapping writable.
    // SAFETY: changes the protection of our own view's page; expected to fail.
    let rc = unsafe {
        libc::mprotect(
            view.as_ptr() as *mut _,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, -1, "mprotect(PROT_WRITE) on a frozen view must fail");

    // Re-opening the file through /proc with write access gives nothing either.
    let path = map_file_of(view.as_ptr() as usize);
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(file) => assert!(
            file.write_at(b"X", 0).is_err(),
            "writing a re-opened frozen block must fail"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
    }
    assert_eq!(view.to_vec(), b"carved in stone");
    shalloc::free(h, me).unwrap();
}

#[test]
fn ordinary_blocks_are_not_frozen() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = shalloc::alloc(b"soft", me).unwrap();
    let view = shalloc::lock_read_only(h, me).unwrap();
    assert!(!view.is_frozen());
    assert_eq!(view.frozen_bytes(), None);
    assert!(!shalloc::lock(h, me).unwrap().is_frozen());
}

#[test]
fn alloc_with_fills_in_place_and_nobody_sees_the_block_before() {
    let _env = TestEnv::new();
    let me = Pid::current();
    shalloc::broker_pid().unwrap();
    let before = handles_in_broker();
    let h = shalloc::alloc_with(1 << 20, me, |buf| {
        assert!(buf.iter().all(|b| *b == 0), "the buffer starts zeroed");
        assert_eq!(
            handles_in_broker(),
            before,
            "no handle exists while the fill runs"
        );
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
    })
    .unwrap();
    assert_eq!(handles_in_broker(), before + 1);
    let view = shalloc::lock(h, me).unwrap();
    assert!(!view.is_frozen());
    assert!(
        view.to_vec()
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );

    let frozen =
        shalloc::alloc_frozen_with(11, me, |buf| buf.copy_from_slice(b"then frozen")).unwrap();
    let view = shalloc::lock_read_only(frozen, me).unwrap();
    assert_eq!(view.frozen_bytes(), Some(&b"then frozen"[..]));
}

#[test]
fn a_panic_in_the_fill_leaves_no_handle_and_no_descriptor() {
    let _env = TestEnv::new();
    let me = Pid::current();
    shalloc::broker_pid().unwrap();
    let give_up = || {
        std::panic::catch_unwind(|| {
            shalloc::alloc_with(4 << 20, me, |_| panic!("the fill gives up"))
        })
    };
    // The first panic loads the panic machinery's own mappings (backtrace symbols): not ours.
    assert!(give_up().is_err());
    let (fds, handles, views) = (fd_count(), handles_in_broker(), shalloc::live_views());
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count();
    for _ in 0..3 {
        assert!(give_up().is_err(), "the panic reaches the caller");
    }
    assert_eq!(fd_count(), fds, "no descriptor leaked");
    assert_eq!(handles_in_broker(), handles, "no handle was made");
    assert_eq!(shalloc::live_views(), views);
    assert_eq!(
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count(),
        maps,
        "no mapping leaked"
    );
}

#[test]
fn tokens_travel_through_the_environment_and_the_cli() {
    let env = TestEnv::new();
    let me = Pid::current();
    let h = shalloc::alloc(b"via a token", me).unwrap();
    let token = Token::new(h, me);
    let out = std::process::Command::new(env.bin())
        .args(["get", &token.to_string()])
        .env("SHALLOC_TOKEN", token.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"via a token");
    let printed = std::process::Command::new(env.bin())
        .args(["put", "--to", &me.to_string(), "--token", "--frozen"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let t: Token = String::from_utf8(printed.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(t.owner, me);
    assert!(
        shalloc::lock_read_only(t.handle, t.owner)
            .unwrap()
            .is_frozen()
    );
}
