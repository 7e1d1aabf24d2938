//! The first end-to-end checks: a block round-trips through a broker started on demand.

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
