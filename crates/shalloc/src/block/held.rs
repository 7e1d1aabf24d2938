//! [`Block`]: a block's descriptor as this process holds it, shared by the handles of the own
//! table that name it and by the views that show it. When the last of them goes, the descriptor
//! is closed — or, for a block this process made and never let out, put back into the pool.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::pool;

/// A block's descriptor, with its size and what may become of it.
#[derive(Debug)]
pub(crate) struct Block {
    fd: ManuallyDrop<OwnedFd>,
    size: u64,
    /// The memfd's length: `size`, or its class.
    len: u64,
    frozen: bool,
    /// Whether the block goes to the pool when the last reference drops: it was made here, is not
    /// frozen, and never left this process (no other process may hold or map it).
    recyclable: AtomicBool,
    /// The pool's generation when the block was made here: a fork since then means a child may
    /// hold the descriptor or a mapping, so the block is not recycled.
    generation: u64,
}

impl Block {
    /// A block made by this process, which it may recycle: no other process holds it yet.
    pub fn made_here(fd: OwnedFd, size: u64, len: u64, frozen: bool) -> Block {
        Block {
            fd: ManuallyDrop::new(fd),
            size,
            len,
            frozen,
            recyclable: AtomicBool::new(!frozen),
            generation: pool::generation(),
        }
    }

    /// A block another process made (or the broker sent): never recycled here.
    pub fn foreign(fd: OwnedFd, size: u64, frozen: bool) -> Block {
        Block {
            fd: ManuallyDrop::new(fd),
            size,
            len: size,
            frozen,
            recyclable: AtomicBool::new(false),
            generation: 0,
        }
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The size holders see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it is sealed against writing.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Records that the block left this process (sent to another table, or reopened by the
    /// broker for another process): it is never recycled.
    pub fn mark_exported(&self) {
        self.recyclable.store(false, Ordering::SeqCst);
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and `self.fd` is not used after this line.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        if self.recyclable.load(Ordering::SeqCst) && self.generation == pool::generation() {
            pool::put(fd, self.len, pool::dirty_extent(self.size, self.len));
        }
    }
}
