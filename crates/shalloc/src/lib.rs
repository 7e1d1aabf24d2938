//! Hand a block of memory to another process: the Windows shell's `SHAllocShared` family on Linux.
//!
//! A process copies a block into a *handle that lives in another process's handle table*, named by
//! that process's id; whoever holds the handle and the owner's id can map the block
//! ([`lock`]), unmap it (drop the [`View`]) and close the handle ([`free`]). The handle always
//! travels together with the owner's [`Pid`] — over a pipe, a socket, a command line.
//!
//! ```no_run
//! use shalloc::{Pid, alloc, free, lock};
//!
//! // Allocate into our own table (any process id of the same user works the same way).
//! let me = Pid::current();
//! let handle = alloc(b"hello, other process", me)?;
//!
//! // Whoever knows (handle, me) can map it; writes are seen by every view, in every process.
//! let view = lock(handle, me)?;
//! assert_eq!(view.to_vec(), b"hello, other process");
//! view.write_at(0, b"HELLO")?;
//!
//! // Freeing the handle leaves live views alone; the block goes with the last of both.
//! free(handle, me)?;
//! assert_eq!(&view.to_vec()[..5], b"HELLO");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! (The examples here compile but do not run as doc tests, which have no private broker;
//! `examples/handoff.rs` runs in the test suite.)
//!
//! # Handing a block to another process
//!
//! The two ownership models of the shell both work:
//!
//! 1. Allocate into the **receiver's** table ([`alloc`] with its pid), send it the handle; it locks
//!    with its own pid, reads, and frees.
//! 2. Allocate into **your own** table, send `(handle, your pid)`; the other side locks it with your
//!    pid and writes an answer; you read it and free.
//!
//! ```no_run
//! # use shalloc::{Pid, Handle};
//! # fn send_to_child(_: Handle) {}
//! # let child = Pid::from_raw(4242);
//! // Model 1, the sender's side: the block goes into the child's table.
//! let handle = shalloc::alloc(b"a change notification", child)?;
//! send_to_child(handle);
//! // The child's side: shalloc::lock(handle, Pid::current()), read, then
//! // shalloc::free(handle, Pid::current()).
//! # Ok::<(), shalloc::Error>(())
//! ```
//!
//! # How it works
//!
//! A block is a memfd the allocating process creates, fills and seals (it can never shrink or grow,
//! so no reader can be made to `SIGBUS`). Each process's handle table is a small segment of shared
//! memory that the process and a per-user **broker** both map (as wineserver keeps tables for
//! Wine); the library starts the broker on demand (`shalloc broker` runs it in the foreground).
//! A process holds the blocks of its own table itself, so its calls on its own table — alloc into
//! it, lock, unlock, free — need no round trip; calls on another process's table go to the broker,
//! which changes the same words by compare-and-swap (of two racing frees, exactly one wins). A
//! process that allocates into another's table gets a few of its handle values leased in advance,
//! with a channel to its owner, and sends each block straight there with no round trip either;
//! the broker takes blocks off that channel before it answers anyone about them. The
//! broker moves only descriptors, never bytes, and learns who is calling from the kernel. A process
//! may touch another's table when ptrace would let it read that process: same user, and the
//! target is dumpable.
//!
//! Each handle in a process's own table costs that process one descriptor (counted against its
//! `RLIMIT_NOFILE`; a full descriptor table gives [`Error::TooManyHandles`]). A handle another
//! process freed in our table has its descriptor closed by our next shalloc call.
//!
//! # Memory that others can write
//!
//! A [`View`] does not hand out `&[u8]` in safe code, because another process may change the bytes
//! at any time: use [`View::read_at`], [`View::write_at`] and [`View::to_vec`], which copy with
//! atomic accesses, or the `unsafe` slices under the rule they state.
//!
//! # C
//!
//! libshalloc.so and libshalloc.a export `SHAllocShared`, `SHLockShared`, `SHLockSharedEx`,
//! `SHUnlockShared`, `SHFreeShared`, `SHMapHandle` and `SHGetSizeShared` with their Win32
//! signatures, declared in `include/shalloc.h`; see [`capi`].

pub mod admin;
mod api;
mod block;
pub mod capi;
mod client;
mod copy;
mod error;
mod ids;
mod own_pid;
mod view;
mod views;

pub use api::{
    alloc, alloc_frozen, alloc_frozen_with, alloc_with, alloc_zeroed, broker_pid, free, lock,
    lock_read_only, map_handle,
};
pub use client::spawn::{BROKER_ENV, find_broker_executable};
pub use client::{BrokerInfo, TIMEOUT_ENV, broker_info};
pub use error::{Error, Result};
pub use ids::{Handle, ParseHandleError, ParseTokenError, Pid, Token};
pub use shalloc_protocol::rendezvous::RUNTIME_DIR_ENV;
pub use view::{View, ViewError};
pub use views::live_views;

/// The pool of warm blocks this process keeps: blocks it made, that never left it, kept after their
/// last handle and view went so that the next allocation of their class skips a fresh memfd and
/// fresh pages (see the README's trust model for why recycling shows nobody anything new).
pub mod pool {
    pub use crate::block::pool::{
        POOL_BYTES_ENV, POOL_IDLE_ENV, pooled, set_limit, trim, without_recycling,
    };
}
