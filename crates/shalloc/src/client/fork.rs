//! Keeping `fork` from copying a lock that another thread holds.
//!
//! A child starts with one thread; if another thread of the parent held the connection or the view
//! registry lock at the moment of `fork`, the child would wait on it forever. The `pthread_atfork`
//! handlers registered here take both locks before `fork` (so `fork` happens at a moment when no
//! other thread is inside either) and release them in the parent and in the child afterwards. The
//! guards wait in a thread-local: the three handlers run on the forking thread.

use std::cell::RefCell;
use std::sync::{MutexGuard, Once};

use crate::client::{Client, lock_client};
use crate::views::{Registry, lock_registry};

type Held = (MutexGuard<'static, Client>, MutexGuard<'static, Registry>);

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

extern "C" fn prepare() {
    // Always the same order: connection, then registry (nothing takes them the other way round).
    let held = (lock_client(), lock_registry());
    HELD.with(|h| *h.borrow_mut() = Some(held));
}

extern "C" fn release() {
    HELD.with(|h| drop(h.borrow_mut().take()));
}

/// In the child: also drop the parent's connection and table at once, so the child does not keep
/// the parent's blocks alive through the descriptors it inherited.
extern "C" fn release_in_child() {
    HELD.with(|h| {
        if let Some((mut client, registry)) = h.borrow_mut().take() {
            client.forget_inherited();
            drop((client, registry));
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
