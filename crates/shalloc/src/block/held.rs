//! [`Block`]: a block's descriptor as this process holds it, shared by the handles of the own
//! table that name it and by the views that show it. When the last of them goes, the descriptor
//! is closed — and a block that never left the processes it was meant for is recycled: one made
//! here goes back to the pool, one another process lent us over its channel is given back to it.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use shalloc_protocol::wire::TAG_WANTS_RETURN;

use super::mapping::{Mapping, pages};
use super::pool::{self, Returning};
use super::received;

/// A block made here and never lent has no tag yet.
pub(crate) const NO_TAG: u32 = u32::MAX;

/// Where a block came from, which decides where it goes when the last reference drops.
#[derive(Debug)]
enum Origin {
    /// Made here. `lessee` is the one other process it was lent to (0: none): it may be reused
    /// only for blocks that process may see anyway (see [`pool`]). `tag` names the memfd in its
    /// deliveries ([`NO_TAG`] until it is first lent), the same each time it is lent again, so
    /// that a receiver that kept its mapping finds it.
    Here { lessee: AtomicU32, tag: AtomicU32 },
    /// Sent by another process over channel `channel` under `handle`, its delivery tagged `tag`:
    /// given back to it. `id` is the memfd's (device, inode).
    Lent {
        channel: Arc<OwnedFd>,
        handle: u32,
        tag: u32,
        id: (u64, u64),
    },
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
    /// Whether the one process this block was lent to exited with it clean (the broker's word):
    /// it may then be reused for our own table (see [`pool`]).
    orphaned: AtomicBool,
    /// The mapping the block keeps between views and refills. Taken only under the view
    /// registry's lock (or in `drop`), so no fork can find it held.
    kept: Mutex<Kept>,
}

/// A block's kept mapping (see [`Mapping`]), whether a view shows it now, and whether it counts
/// among the [`PARKED`] ones.
#[derive(Debug, Default)]
struct Kept {
    mapping: Option<Mapping>,
    shown: bool,
    parked: bool,
}

/// The most kept mappings of live blocks that no view shows (each is a mapping of this process:
/// a process holding many blocks must not run out of them). Those of pooled blocks and of blocks
/// given back are bounded by their own caps.
const MAX_PARKED: usize = 64;
/// How many kept mappings of live blocks no view shows now.
static PARKED: AtomicUsize = AtomicUsize::new(0);

impl Kept {
    /// Counts the mapping, not shown by any view, among the parked ones; drops it (unmapping it)
    /// instead when there are enough, or when it cannot serve again (`useful` false).
    fn park(&mut self, useful: bool) {
        if self.mapping.is_none() || self.parked {
            return;
        }
        if useful && PARKED.fetch_add(1, Ordering::SeqCst) < MAX_PARKED {
            self.parked = true;
        } else {
            if useful {
                PARKED.fetch_sub(1, Ordering::SeqCst);
            }
            self.mapping = None;
        }
    }

    /// No longer counts it among the parked ones (a view shows it, or the block goes).
    fn unpark(&mut self) {
        if std::mem::take(&mut self.parked) {
            PARKED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Block {
    fn new(
        fd: OwnedFd,
        (size, len): (u64, u64),
        frozen: bool,
        origin: Origin,
        mapping: Option<Mapping>,
    ) -> Block {
        let recyclable = !frozen && !matches!(origin, Origin::Foreign);
        let mut kept = Kept {
            mapping: mapping.filter(|_| !frozen),
            shown: false,
            parked: false,
        };
        kept.park(recyclable);
        Block {
            fd: ManuallyDrop::new(fd),
            size,
            len,
            frozen,
            origin,
            exported: AtomicBool::new(!recyclable),
            generation: pool::generation(),
            orphaned: AtomicBool::new(false),
            kept: Mutex::new(kept),
        }
    }

    /// A block made by this process, `len` bytes long (frozen ones are never recycled);
    /// `lessee` and `tag` as [`Origin::Here`]; with the read/write mapping of its whole length it
    /// kept in the pool, if any.
    pub fn made_here(
        fd: OwnedFd,
        (size, len): (u64, u64),
        frozen: bool,
        (lessee, tag): (u32, u32),
        mapping: Option<Mapping>,
    ) -> Block {
        let origin = Origin::Here {
            lessee: AtomicU32::new(lessee),
            tag: AtomicU32::new(tag),
        };
        Block::new(fd, (size, len), frozen, origin, mapping)
    }

    /// A block another process sent over `channel` under `handle`, tagged `tag`, whose memfd is
    /// `id` (with the mapping we kept of it, if it is one we gave back before).
    pub fn lent(
        fd: OwnedFd,
        (size, frozen): (u64, bool),
        channel: Arc<OwnedFd>,
        (handle, tag): (u32, u32),
        id: (u64, u64),
    ) -> Block {
        let mapping = if frozen {
            None
        } else {
            received::find(&channel, tag, id, size)
        };
        let origin = Origin::Lent {
            channel,
            handle,
            tag,
            id,
        };
        Block::new(fd, (size, size), frozen, origin, mapping)
    }

    /// The tag that names this block (made here) in its deliveries: the one it had, or a new one
    /// the first time it is lent.
    pub fn lend_tag(&self) -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let new = NEXT.fetch_add(1, Ordering::Relaxed) & !TAG_WANTS_RETURN;
        let Origin::Here { tag, .. } = &self.origin else {
            return new;
        };
        match tag.compare_exchange(NO_TAG, new, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => new,
            Err(had) => had,
        }
    }

    /// A block the broker sent: never recycled here.
    pub fn foreign(fd: OwnedFd, size: u64, frozen: bool) -> Block {
        Block::new(fd, (size, size), frozen, Origin::Foreign, None)
    }

    /// Lends the kept mapping to a view of the whole block (read/write or not), making it first
    /// if the block has none: `None` when a view shows it already, or it does not fit (a view maps
    /// exactly the block's size, in pages, with its own protection). Call under the view
    /// registry's lock.
    pub fn show(&self, write: bool) -> Option<NonNull<u8>> {
        if self.frozen || self.size == 0 || matches!(self.origin, Origin::Foreign) {
            return None;
        }
        let want = pages(self.size);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.shown {
            return None;
        }
        if kept.mapping.is_none() {
            // Made here: kept read/write over the whole memfd, for refills too. Lent to us: as
            // the view needs it.
            let (len, kept_write) = match self.origin {
                Origin::Here { .. } => (self.len, true),
                _ => (self.size, write),
            };
            if pages(len) != want || kept_write != write {
                return None;
            }
            kept.mapping = Some(Mapping::new(self.fd(), len, write).ok()?);
        }
        let mapping = kept.mapping.as_ref()?;
        if mapping.len() as u64 != want || mapping.writable() != write {
            return None;
        }
        let ptr = mapping.ptr();
        kept.shown = true;
        kept.unpark();
        Some(ptr)
    }

    /// Takes the kept mapping back from the view that showed it: it stays for the next view or
    /// refill while the block may still be recycled and few are parked, else it is unmapped. Call
    /// under the view registry's lock.
    pub fn unshow(&self) {
        let useful = self.recyclable();
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.shown = false;
        kept.park(useful);
    }

    /// Whether the block may still be recycled (nothing marked it exported, no fork since it came).
    fn recyclable(&self) -> bool {
        !self.exported.load(Ordering::SeqCst) && self.generation == pool::generation()
    }

    /// Whether this process made the block.
    pub fn is_made_here(&self) -> bool {
        matches!(self.origin, Origin::Here { .. })
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

    /// Records that the process this block (made here) was lent to exited while it was open in
    /// its table and clean, as the broker said: no view of it is left anywhere, and it may be
    /// reused for our own table.
    pub fn orphan(&self) {
        self.orphaned.store(true, Ordering::SeqCst);
    }

    /// Records that the block, made here, is being lent to process `pid` over a channel: it may
    /// come back, for `pid` only. A block made here and lent to a second process is not recycled.
    pub fn lend_to(&self, pid: u32) {
        match &self.origin {
            Origin::Here { lessee, .. } => {
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
        let kept = self.kept.get_mut().unwrap_or_else(PoisonError::into_inner);
        kept.unpark();
        // No view shows it (each view holds the block), so the mapping is free to go.
        let mapping = kept.mapping.take();
        if !self.recyclable() {
            return;
        }
        // Where it goes checks the fork generation again, under the lock a fork takes first.
        match &self.origin {
            Origin::Here { lessee, tag } => {
                let lessee = lessee.load(Ordering::SeqCst);
                let tag = tag.load(Ordering::SeqCst);
                // The pages we wrote or reserved: its size, in pages.
                let warm = pool::dirty_extent(self.size, self.len);
                // A block that came back from another process: it may have written anywhere in
                // the memfd, so all of it counts as written.
                let dirty = if lessee == 0 { warm } else { self.len };
                let orphan = self.orphaned.load(Ordering::SeqCst);
                pool::put(Returning {
                    fd,
                    mapping,
                    len: self.len,
                    dirty,
                    warm,
                    lessee: if orphan { 0 } else { lessee },
                    orphan,
                    generation: self.generation,
                    // An orphan is never lent again to anyone who kept its mapping.
                    tag: if orphan { NO_TAG } else { tag },
                });
            }
            Origin::Lent {
                channel,
                handle,
                tag,
                id,
            } => received::give_back(
                channel,
                (fd, *id),
                mapping,
                (*handle, *tag),
                self.generation,
            ),
            Origin::Foreign => {}
        }
    }
}
