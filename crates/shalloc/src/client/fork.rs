//! Keeping `fork` from copying a lock that another thread holds.
//!
//! A child starts with one thread; if another thread of the parent held the connection, the view
//! registry, the block pool or the kept mappings' lock at the moment of `fork`, the child would
//! wait on it forever. The `pthread_atfork` handlers registered here take the four locks before
//! `fork` (so `fork` happens at a moment when no other thread is inside any) and release them in
//! the parent and in the child afterwards. The guards wait in a thread-local: the three handlers run on the forking
//! thread.
//!
//! They also tell the block pool that a fork happened: the child may now hold every block the
//! parent held or mapped, so none of those is recycled (see [`crate::block::pool`]); the child
//! drops the pool and the kept mappings it inherited. And they note the fork in the own table's
//! segment, so that when this process exits the broker tells no sender its blocks are clean.

use std::cell::RefCell;
use std::sync::{MutexGuard, Once};

use crate::block::pool::{self, Pool, lock_pool};
use crate::block::received::{Received, lock_received};
use crate::client::{Client, lock_client};
use crate::views::{Registry, lock_registry};

type Held = (
    MutexGuard<'static, Client>,
    MutexGuard<'static, Registry>,
    MutexGuard<'static, Pool>,
    MutexGuard<'static, Received>,
);

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

extern "C" fn prepare() {
    // Always the same order: connection, registry, pool, kept mappings (nothing takes them the
    // other way round).
    let held = (lock_client(), lock_registry(), lock_pool(), lock_received());
    held.0.note_fork();
    HELD.with(|h| *h.borrow_mut() = Some(held));
}

extern "C" fn release() {
    HELD.with(|h| {
        if let Some((client, registry, mut pool, mut received)) = h.borrow_mut().take() {
            pool::after_fork(&mut pool, &mut received, false);
            drop((client, registry, pool, received));
        }
    });
}

/// In the child: also drop the parent's connection, table and pool at once, so the child does not
/// keep the parent's blocks alive through the descriptors it inherited.
extern "C" fn release_in_child() {
    HELD.with(|h| {
        if let Some((mut client, registry, mut pool, mut received)) = h.borrow_mut().take() {
            // First: the blocks the table drops must not come back to a pool.
            pool::after_fork(&mut pool, &mut received, true);
            client.forget_inherited();
            drop((client, registry, pool, received));
        }
    });
}

/// Registers the handlers, once per process.
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are `extern "C"` functions with no arguments that never unwind
        // (taking a mutex and storing or dropping its guard cannot panic: poisoning is ignored).
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(release), Some(release_in_child));
        }
    });
}
