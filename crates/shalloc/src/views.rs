//! The registry of live views in this process: address → length, size and owner.
//!
//! Unlocking takes any pointer inside a view and must unmap exactly that view, or refuse without
//! touching anything (a pointer into no view, or into a view that is not the caller's to unmap).
//! Mapping and unmapping happen under the registry lock, so no other thread can map a new view at
//! an address between its removal here and its `munmap`.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::block::Block;
use crate::block::mapping::{Mapping, pages};
use crate::error::{Error, Result};

/// Who may unmap a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Made by `SHLockShared`: `SHUnlockShared` unmaps it.
    C,
    /// Owned by a Rust [`View`](crate::View) guard: only its drop unmaps it.
    Rust,
}

#[derive(Debug)]
struct Record {
    /// Bytes mapped (the block's size rounded up to pages; one page for an empty block).
    mapped: usize,
    /// The block's size.
    size: u64,
    /// Whether the block's descriptor carried F_SEAL_WRITE.
    frozen: bool,
    owner: Owner,
    /// The block as this process holds it, for a view of the own table's block: the view keeps it
    /// from being recycled while it lives.
    held: Option<Arc<Block>>,
    /// The view's own mapping, unmapped with the record; `None` when it shows `held`'s kept
    /// mapping, which is given back instead.
    mapping: Option<Mapping>,
}

/// The registry's contents.
#[derive(Debug, Default)]
pub(crate) struct Registry(BTreeMap<usize, Record>);

static REGISTRY: Mutex<Registry> = Mutex::new(Registry(BTreeMap::new()));

pub(crate) fn lock_registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a pointer could not be unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotAView {
    /// It is inside no live view.
    Unknown,
    /// It is inside a view that belongs to a Rust guard.
    OwnedByRust,
}

/// Maps `size` bytes of `fd` (read/write or read-only) and registers the view, which keeps `held`
/// until it is unmapped. A Rust guard's view shows `held`'s kept mapping when it can (no other
/// view shows it, and it has the right length and protection): no `mmap`, and pages already in
/// the page tables.
///
/// An empty block gets one inaccessible page, so that every lock still returns a distinct,
/// non-null address.
pub(crate) fn map(
    fd: BorrowedFd<'_>,
    size: u64,
    write: bool,
    frozen: bool,
    owner: Owner,
    held: Option<Arc<Block>>,
) -> Result<NonNull<u8>> {
    let too_large = || Error::TooLarge {
        size,
        max: usize::MAX as u64,
    };
    let mapped = usize::try_from(pages(size)).map_err(|_| too_large())?;
    let mut registry = lock_registry();
    // Only for a Rust guard: safe code cannot use its pointer once it is dropped, while a C
    // caller's pointer must stop working at `SHUnlockShared` (the kept mapping stays mapped).
    let kept = held
        .as_ref()
        .filter(|_| owner == Owner::Rust)
        .and_then(|block| block.show(write));
    let (ptr, mapping) = match kept {
        Some(ptr) => (ptr, None),
        None => {
            let mapping = if size == 0 {
                Mapping::inaccessible_page()?
            } else {
                Mapping::new(fd, size, write)?
            };
            (mapping.ptr(), Some(mapping))
        }
    };
    let mapped = mapping.as_ref().map_or(mapped, Mapping::len);
    let record = Record {
        mapped,
        size,
        frozen,
        owner,
        held,
        mapping,
    };
    registry.0.insert(ptr.as_ptr() as usize, record);
    Ok(ptr)
}

impl Registry {
    /// The start of the view containing `addr`, if any.
    fn containing(&self, addr: usize) -> Option<(usize, &Record)> {
        let (&start, record) = self.0.range(..=addr).next_back()?;
        (addr < start + record.mapped).then_some((start, record))
    }
}

/// Unmaps the view that contains `addr`, if `owner` may.
pub(crate) fn unmap_containing(addr: usize, owner: Owner) -> std::result::Result<(), NotAView> {
    let mut registry = lock_registry();
    let (start, record) = registry.containing(addr).ok_or(NotAView::Unknown)?;
    if record.owner != owner {
        return Err(NotAView::OwnedByRust);
    }
    let Some(record) = registry.0.remove(&start) else {
        return Err(NotAView::Unknown);
    };
    // Under the registry lock, so that no other thread can map a new view at this address between
    // its removal and its unmapping. Only then may the block be recycled: no view of it is left
    // here.
    match (record.mapping, &record.held) {
        (Some(mapping), _) => drop(mapping),
        // The block's kept mapping: it stays, for the block's next view or refill.
        (None, Some(block)) => block.unshow(),
        (None, None) => {}
    }
    drop(record.held);
    Ok(())
}

/// The size of the block whose view starts exactly at `addr`.
pub(crate) fn size_at(addr: usize) -> Option<u64> {
    lock_registry().0.get(&addr).map(|r| r.size)
}

/// Whether the view containing `addr` shows a frozen block; `None` when `addr` is in no view.
pub(crate) fn frozen_at(addr: usize) -> Option<bool> {
    lock_registry().containing(addr).map(|(_, r)| r.frozen)
}

/// The number of live views in this process (for tests and diagnostics).
pub fn live_views() -> usize {
    lock_registry().0.len()
}
