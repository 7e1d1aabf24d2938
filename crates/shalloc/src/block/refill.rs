//! Writing a new block's contents into a pooled one: the new bytes from 0, and zeros over every
//! byte the old block may have written past them, so that nobody — through a view or through the
//! descriptor — sees anything of the old block.
//!
//! Through the block's kept mapping where its pages are known to exist (a copy into mapped pages
//! is ~3.5× cheaper than `pwrite` into them); with `pwrite` or `fallocate` wherever a page may be
//! missing, so that a shortage of memory is an error, as for a fresh block.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::FallocateFlags;

use super::Contents;
use super::fresh::write_all;
use super::mapping::Mapping;
use super::pool::{Pooled, dirty_extent};
use crate::error::{Error, Result};

/// Zeros for writing over stale bytes.
static ZEROS: [u8; 4096] = [0; 4096];

/// Allocates the pages `contents` will need in the pooled block, before they are consumed (the
/// step that can run out of memory, but for `pwrite`'s own).
pub(crate) fn prepare(pooled: &Pooled, contents: &Contents<'_>) -> Result<()> {
    match contents {
        Contents::Bytes(_) => Ok(()),
        Contents::Zeroed(size) => {
            // Holes: zero whatever was there, and the pages come back as they are reserved.
            let stale = pooled.dirty.min(dirty_extent(*size, pooled.len));
            punch(&pooled.fd, 0, stale)?;
            reserve(&pooled.fd, 0, *size)
        }
        // The pages the block had are there still; only those past them need reserving.
        Contents::Filled(size, _) => reserve(&pooled.fd, pooled.warm.min(*size), *size),
    }
}

/// Puts `contents` into the pooled block, [`prepare`]d for them: its size is theirs from now on.
/// The block keeps (or gets) a read/write mapping for the writes.
pub(crate) fn refill(pooled: &mut Pooled, contents: Contents<'_>) -> Result<()> {
    let size = contents.len();
    // Whole pages past the new block's last page go back to the system (holes read as zero).
    let keep = dirty_extent(size, pooled.len);
    if pooled.dirty > keep {
        punch(&pooled.fd, keep, pooled.dirty - keep)?;
    }
    let stale = pooled.dirty.min(keep);
    if pooled.mapping.is_none() && !matches!(contents, Contents::Zeroed(_)) && pooled.len > 0 {
        // Without one, the writes below take the slower way.
        pooled.mapping = Mapping::new(pooled.fd.as_fd(), pooled.len, true).ok();
    }
    // Bytes below this are in pages the block had: mapped writes there allocate nothing.
    let warm = pooled.warm.min(keep);
    let fd = &pooled.fd;
    let mapping = &mut pooled.mapping;
    match contents {
        Contents::Bytes(data) => {
            let split = usize::try_from(warm).unwrap_or(usize::MAX).min(data.len());
            let (in_warm, past) = data.split_at(split);
            if mapping.as_ref().is_some_and(|m| m.copy_in(0, in_warm)) {
                write_all(fd, past, split as u64)?;
            } else {
                write_all(fd, data, 0)?;
            }
        }
        Contents::Zeroed(_) => {}
        Contents::Filled(0, fill) => fill(&mut []),
        Contents::Filled(_, fill) => {
            // The function is promised zeros: clear what the old block wrote (warm pages, so a
            // plain memset beats giving them back).
            let old = usize::try_from(stale.min(size)).unwrap_or(usize::MAX);
            let len = usize::try_from(size).unwrap_or(usize::MAX);
            match mapping.as_mut() {
                Some(mapping) if mapping.writable() && mapping.len() >= len => {
                    // SAFETY: the kept mapping is read/write and at least `len` long; the block is
                    // in the pool's hands alone: no view of it is live, and no other process ever
                    // held it (fill functions get only such blocks, see `pool::take`), so nothing
                    // else refers to it while `fill` runs; the slice does not outlive this arm.
                    let bytes = unsafe { mapping.bytes_mut(len) };
                    bytes[..old].fill(0);
                    fill(bytes);
                }
                _ => {
                    let mut map = Mapping::new(fd.as_fd(), size, true)?;
                    map.populate_for_writing();
                    // SAFETY: a mapping of our own, dropped at the end of this arm; the block is
                    // in the pool's hands alone, as above.
                    let bytes = unsafe { map.bytes_mut(len) };
                    let old = old.min(bytes.len());
                    bytes[..old].fill(0);
                    fill(bytes);
                }
            }
        }
    }
    zero_past(fd, mapping.as_ref(), size, stale, warm)
}

/// Zeros `[from, to)`, stale bytes past the new contents: through `mapping` below `warm`, by
/// writing past it.
fn zero_past(fd: &OwnedFd, mapping: Option<&Mapping>, from: u64, to: u64, warm: u64) -> Result<()> {
    let mapped_to = to.min(warm);
    let mut from = from;
    if from < mapped_to {
        let (a, b) = (from as usize, mapped_to as usize);
        if mapping.is_some_and(|m| m.zero(a, b)) {
            from = mapped_to;
        }
    }
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64) as usize;
        write_all(fd, &ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// Frees the pages of `[offset, offset + len)`: they read as zero from now on.
fn punch(fd: &OwnedFd, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(|e| Error::os("fallocate (punching a hole)", e))
}

/// Allocates the pages of `[from, to)` now, so a shortage of memory is an error here, not a
/// `SIGBUS` later.
fn reserve(fd: &OwnedFd, from: u64, to: u64) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    rustix::fs::fallocate(fd, FallocateFlags::KEEP_SIZE, from, to - from)
        .map_err(|e| Error::os("fallocate", e))
}
