//! Writing a new block's contents into a pooled one: the new bytes from 0, and zeros over every
//! byte the old block may have written past them, so that nobody — through a view or through the
//! descriptor — sees anything of the old block.

use std::os::fd::OwnedFd;

use rustix::fs::FallocateFlags;

use super::Contents;
use super::fresh::{PrivateFill, write_all};
use super::pool::{Pooled, dirty_extent};
use crate::error::{Error, Result};

/// Zeros for the tail of a block's last page.
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
            reserve(&pooled.fd, *size)
        }
        Contents::Filled(size, _) => reserve(&pooled.fd, *size),
    }
}

/// Puts `contents` into the pooled block, [`prepare`]d for them: its size is theirs from now on.
pub(crate) fn refill(pooled: &Pooled, contents: Contents<'_>) -> Result<()> {
    let fd = &pooled.fd;
    let size = contents.len();
    // Whole pages past the new block's last page go back to the system (holes read as zero).
    let keep = dirty_extent(size, pooled.len);
    if pooled.dirty > keep {
        punch(fd, keep, pooled.dirty - keep)?;
    }
    let stale = pooled.dirty.min(keep);
    match contents {
        Contents::Bytes(data) => {
            write_all(fd, data, 0)?;
            zero(fd, size, stale)?;
        }
        Contents::Zeroed(_) => {}
        Contents::Filled(0, fill) => fill(&mut []),
        Contents::Filled(_, fill) => {
            let mut map = PrivateFill::map(fd, size)?;
            let bytes = map.bytes();
            // The function is promised zeros: clear what the old block wrote (warm pages, so a
            // plain memset beats giving them back).
            let old = usize::try_from(stale)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes[..old].fill(0);
            fill(bytes);
            drop(map);
            zero(fd, size, stale)?;
        }
    }
    Ok(())
}

/// Zeros `[from, to)` by writing (a tail shorter than a page, in the pages kept).
fn zero(fd: &OwnedFd, mut from: u64, to: u64) -> Result<()> {
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

/// Allocates the pages of `[0, len)` now, so a shortage of memory is an error here, not a
/// `SIGBUS` later.
fn reserve(fd: &OwnedFd, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(fd, FallocateFlags::KEEP_SIZE, 0, len)
        .map_err(|e| Error::os("fallocate", e))
}
