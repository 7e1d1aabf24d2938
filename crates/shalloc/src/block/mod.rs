//! Blocks as this process makes and holds them.
//!
//! - [`fresh`]: a new memfd, filled and sealed before any other process can receive it.
//! - [`held`]: a block's descriptor shared by the own table's handles and the views that show it.
//! - [`pool`]: blocks that came back after their last handle and view went, pages kept warm.
//! - [`refill`]: new contents written into a pooled block, nothing of the old one left visible.
//! - [`mapping`]: a block's mapping, kept from one view or refill to the next.
//! - [`received`]: mappings of blocks given back to the process that lent them, kept for their
//!   return.
//!
//! A block's *size* is what its holders see; its memfd may be as long as the size's class
//! ([`class_bytes`]), so that it can be recycled for any block of that class. Every byte past the
//! size is zero.

mod fresh;
pub(crate) mod held;
pub(crate) mod mapping;
pub(crate) mod pool;
pub(crate) mod received;
mod refill;

use std::sync::Arc;

use shalloc_protocol::block::class_bytes;

use crate::error::{Error, Result};
use fresh::SealedBlock;
pub(crate) use held::Block;

/// A function that writes a block's bytes in place.
pub(crate) type Fill<'a> = Box<dyn FnOnce(&mut [u8]) + 'a>;

/// What goes into a new block.
pub(crate) enum Contents<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// This many zero bytes.
    Zeroed(u64),
    /// This many bytes, written in place by the function (they start zeroed).
    Filled(u64, Fill<'a>),
}

impl Contents<'_> {
    /// The block's size.
    pub fn len(&self) -> u64 {
        match self {
            Contents::Bytes(data) => data.len() as u64,
            Contents::Zeroed(len) | Contents::Filled(len, _) => *len,
        }
    }
}

/// Makes a block of `contents` for the table of process `target` (0: our own): from the pool
/// when it holds one of the right class that may go there (not for a frozen block, which can
/// never be written again), else fresh — a class long when recycling is on, so that it can be
/// recycled later.
///
/// Returns the block and whether it came from the pool.
pub(crate) fn make(contents: Contents<'_>, frozen: bool, target: u32) -> Result<(Block, bool)> {
    let size = contents.len();
    let class = class_bytes(size);
    let mut contents = contents;
    if !frozen {
        // A fill function gets the block as `&mut [u8]`: only a block nobody else ever held.
        let exclusive = matches!(contents, Contents::Filled(..));
        if let Some(pooled) = pool::take(class, target, exclusive) {
            match from_pool(pooled, contents)? {
                Ok(block) => return Ok((block, true)),
                Err(unused) => contents = unused,
            }
        }
    }
    let recycling = pool::enabled();
    let len = if !frozen && recycling { class } else { size };
    // Warm blocks must never make an allocation fail that would succeed without them: short of
    // memory, the pool gives its pages back and the allocation is tried once more (plain bytes
    // can be written again; other contents are consumed only after their pages are reserved).
    let fresh = match contents {
        Contents::Bytes(data) => retry_after_trim(|| {
            SealedBlock::finish(SealedBlock::create(0)?, Contents::Bytes(data), frozen, len)
        })?,
        contents => {
            let fd = retry_after_trim(|| SealedBlock::create(fresh::reserved_by(&contents)))?;
            SealedBlock::finish(fd, contents, frozen, len)?
        }
    };
    let block = Block::made_here(
        fresh.fd,
        (fresh.size, fresh.len),
        frozen,
        (0, held::NO_TAG),
        None,
    );
    if !recycling {
        // Made with recycling off (perhaps for this thread only): never kept.
        block.mark_exported();
    }
    Ok((block, false))
}

/// Refills `pooled` with `contents`: `Ok(Err(contents))` when memory ran short before they were
/// consumed (the pool is then emptied, and a fresh block is the way on).
fn from_pool(
    mut pooled: pool::Pooled,
    contents: Contents<'_>,
) -> Result<Result<Block, Contents<'_>>> {
    let size = contents.len();
    // The step that can run out of memory: for plain bytes the whole refill (pwrite allocates
    // the pages the old block did not have as it goes, and the bytes can be written again);
    // for the rest, reserving their pages, before they are consumed.
    let (ready, contents) = match contents {
        Contents::Bytes(data) => (
            refill::refill(&mut pooled, Contents::Bytes(data)),
            Contents::Bytes(data),
        ),
        contents => (refill::prepare(&pooled, &contents), contents),
    };
    match ready {
        Err(Error::OutOfMemory { .. }) => {
            drop(pooled);
            pool::trim();
            return Ok(Err(contents));
        }
        ready => ready?,
    }
    if !matches!(contents, Contents::Bytes(_)) {
        refill::refill(&mut pooled, contents)?;
    }
    Ok(Ok(Block::made_here(
        pooled.fd,
        (size, pooled.len),
        false,
        (pooled.lessee, pooled.tag),
        pooled.mapping,
    )))
}

/// Runs `f`, and once more after emptying the pool if it ran out of memory while the pool held
/// blocks.
fn retry_after_trim<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Err(Error::OutOfMemory { .. }) if pool::trim() > 0 => f(),
        other => other,
    }
}

/// A block the broker sent, shared by this process's handles and views.
pub(crate) fn foreign(fd: std::os::fd::OwnedFd, size: u64, frozen: bool) -> Arc<Block> {
    Arc::new(Block::foreign(fd, size, frozen))
}
