//! Blocks as this process makes and holds them.
//!
//! - [`fresh`]: a new memfd, filled and sealed before any other process can receive it.
//! - [`held`]: a block's descriptor shared by the own table's handles and the views that show it.
//! - [`pool`]: blocks that came back after their last handle and view went, pages kept warm.
//! - [`refill`]: new contents written into a pooled block, nothing of the old one left visible.
//!
//! A block's *size* is what its holders see; its memfd may be as long as the size's class
//! ([`class_bytes`]), so that it can be recycled for any block of that class. Every byte past the
//! size is zero.

mod fresh;
pub(crate) mod held;
pub(crate) mod pool;
mod refill;

use std::sync::Arc;

use shalloc_protocol::block::class_bytes;

use crate::error::Result;
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
pub(crate) fn make(contents: Contents<'_>, frozen: bool, target: u32) -> Result<Block> {
    let size = contents.len();
    let class = class_bytes(size);
    if !frozen {
        if let Some(pooled) = pool::take(class, target) {
            // A pooled block that cannot be refilled (out of memory) is closed with the error.
            refill::refill(&pooled, contents)?;
            return Ok(Block::made_here(
                pooled.fd,
                size,
                pooled.len,
                false,
                pooled.lessee,
            ));
        }
    }
    let len = if !frozen && pool::enabled() {
        class
    } else {
        size
    };
    let fresh = SealedBlock::new(contents, frozen, len)?;
    Ok(Block::made_here(fresh.fd, fresh.size, fresh.len, frozen, 0))
}

/// A block the broker sent, shared by this process's handles and views.
pub(crate) fn foreign(fd: std::os::fd::OwnedFd, size: u64, frozen: bool) -> Arc<Block> {
    Arc::new(Block::foreign(fd, size, frozen))
}
