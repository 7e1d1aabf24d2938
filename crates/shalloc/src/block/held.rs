//! [`Block`]: a block's descriptor as this process holds it, shared by the handles of the own
//! table that name it and by the views that show it. When the last of them goes, the descriptor
//! is closed — and a block that never left the processes it was meant for is recycled: one made
//! here goes back to the pool, one another process lent us over its channel is given back to it.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use shalloc_protocol::channel;

use super::pool;

/// Where a block came from, which decides where it goes when the last reference drops.
#[derive(Debug)]
enum Origin {
    /// Made here. `lessee` is the one other process it was lent to (0: none): it may be reused
    /// only for blocks that process may see anyway (see [`pool`]).
    Here { lessee: AtomicU32 },
    /// Sent by another process over channel `channel` under `handle`: given back to it.
    Lent { channel: Arc<OwnedFd>, handle: u32 },
    /// Anything else (the broker sent it): closed.
    Foreign,
}

/// A block's descriptor, with its size and what may become of it.
#[derive(Debug)]
pub(crate) struct Block {
    fd: ManuallyDrop<OwnedFd>,
    size: u64,
    /// The memfd's length: `size`, or its class.
    len: u64,
    frozen: bool,
    origin: Origin,
    /// Whether the block reached a process it was not meant for (another table through the
    /// broker, a process that locked it through the broker): then it is never recycled.
    exported: AtomicBool,
    /// The pool's generation when the block came here: a fork since then means a child may hold
    /// the descriptor or a mapping, so the block is not recycled.
    generation: u64,
}

impl Block {
    fn new(fd: OwnedFd, size: u64, len: u64, frozen: bool, origin: Origin) -> Block {
        let recyclable = !frozen && !matches!(origin, Origin::Foreign);
        Block {
            fd: ManuallyDrop::new(fd),
            size,
            len,
            frozen,
            origin,
            exported: AtomicBool::new(!recyclable),
            generation: pool::generation(),
        }
    }

    /// A block made by this process, `len` bytes long (frozen ones are never recycled);
    /// `lessee` as [`Origin::Here`].
    pub fn made_here(fd: OwnedFd, size: u64, len: u64, frozen: bool, lessee: u32) -> Block {
        let lessee = AtomicU32::new(lessee);
        Block::new(fd, size, len, frozen, Origin::Here { lessee })
    }

    /// A block another process sent over `channel` under `handle`.
    pub fn lent(fd: OwnedFd, size: u64, frozen: bool, channel: Arc<OwnedFd>, handle: u32) -> Block {
        Block::new(fd, size, size, frozen, Origin::Lent { channel, handle })
    }

    /// A block the broker sent: never recycled here.
    pub fn foreign(fd: OwnedFd, size: u64, frozen: bool) -> Block {
        Block::new(fd, size, size, frozen, Origin::Foreign)
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

    /// Records that the block reached a process it was not meant for: it is never recycled.
    pub fn mark_exported(&self) {
        self.exported.store(true, Ordering::SeqCst);
    }

    /// Records that the block, made here, is being lent to process `pid` over a channel: it may
    /// come back, for `pid` only. A block made here and lent to a second process is not recycled.
    pub fn lend_to(&self, pid: u32) {
        match &self.origin {
            Origin::Here { lessee } => {
                let before = lessee.swap(pid, Ordering::SeqCst);
                if before != 0 && before != pid {
                    self.mark_exported();
                }
            }
            Origin::Lent { .. } | Origin::Foreign => self.mark_exported(),
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and `self.fd` is not used after this line.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        if self.exported.load(Ordering::SeqCst) || self.generation != pool::generation() {
            return;
        }
        match &self.origin {
            Origin::Here { lessee } => {
                let lessee = lessee.load(Ordering::SeqCst);
                // A block that came back from another process: it may have written anywhere in
                // the memfd, so all of it counts as written.
                let dirty = if lessee == 0 {
                    pool::dirty_extent(self.size, self.len)
                } else {
                    self.len
                };
                pool::put(fd, self.len, dirty, lessee);
            }
            Origin::Lent { channel, handle } => {
                drop(fd);
                // If the sender cannot take it now, it simply never recycles the block.
                let _ = channel::give_back(channel.as_fd(), *handle);
            }
            Origin::Foreign => {}
        }
    }
}
