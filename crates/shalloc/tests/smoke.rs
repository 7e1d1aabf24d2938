//! The first end-to-end checks: a block round-trips through a broker started on demand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestEnv;
use shalloc::{Pid, alloc, free, lock};

#[test]
fn alloc_lock_free_in_own_table_starts_a_broker() {
    let env = TestEnv::new();
    assert!(env.running_broker().is_none());
    let me = Pid::current();
    let h = alloc(b"hello", me).unwrap();
    assert!(
        env.running_broker().is_some(),
        "the first call started a broker"
    );
    let v = lock(h, me).unwrap();
    assert_eq!(v.to_vec(), b"hello");
    free(h, me).unwrap();
    assert!(matches!(
        free(h, me),
        Err(shalloc::Error::InvalidHandle { .. })
    ));
    assert_eq!(v.to_vec(), b"hello", "views outlive the handle");
}

#[test]
fn c_unlock_cannot_unmap_a_rust_view() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let h = alloc(b"guarded", me).unwrap();
    let v = lock(h, me).unwrap();
    let before = shalloc::live_views();
    let ptr = v.as_ptr() as *mut std::ffi::c_void;
    shalloc::capi::shalloc_set_last_error(0);
    assert_eq!(shalloc::capi::SHUnlockShared(ptr), shalloc::capi::FALSE);
    assert_eq!(shalloc::capi::shalloc_last_error(), 487);
    // SAFETY: the message pointer is valid until this thread's next failure.
    let message = unsafe { std::ffi::CStr::from_ptr(shalloc::capi::shalloc_last_error_message()) };
    assert!(
        message.to_string_lossy().contains("Rust View guard"),
        "{message:?}"
    );
    assert_eq!(shalloc::live_views(), before, "nothing was unmapped");
    assert_eq!(v.to_vec(), b"guarded", "the guard's view is intact");
    assert_eq!(
        shalloc::capi::SHGetSizeShared(ptr),
        7,
        "sizing a Rust view is harmless and allowed"
    );
    drop(v);
    assert_eq!(
        shalloc::live_views(),
        before - 1,
        "the guard unmaps its view on drop"
    );
    free(h, me).unwrap();
}
