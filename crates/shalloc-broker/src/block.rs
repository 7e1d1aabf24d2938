//! Checking a descriptor a client sent before it becomes a block.
//!
//! The broker trusts nothing about it: it must be a regular shmem file open for reading and
//! writing, sealed so that no holder can shrink, grow or re-seal it (so no receiver can be made to
//! `SIGBUS`), with exactly the size the request claims, within the broker's cap.

use std::os::fd::OwnedFd;

use rustix::fs::{FileType, OFlags, SealFlags};

use crate::failure::Failure;

/// The seals every block must carry.
pub(crate) const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A validated block: its memfd and size.
#[derive(Debug)]
pub(crate) struct Block {
    pub fd: OwnedFd,
    pub size: u64,
    /// Sealed against writing (`F_SEAL_WRITE`): nobody can change it, so nobody may lock it
    /// writable.
    pub frozen: bool,
}

impl Block {
    /// Validates `fd` as a block of `size` bytes, no larger than `max`.
    pub fn accept(fd: OwnedFd, size: u64, max: u64) -> Result<Block, Failure> {
        if size > max {
            return Err(Failure::too_large(format!(
                "a block of {size} bytes is over the broker's limit of {max}"
            )));
        }
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| Failure::invalid_block(format!("cannot stat the block: {e}")))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(Failure::invalid_block(
                "the descriptor sent is not a regular file",
            ));
        }
        // Only shmem and hugetlbfs files have seals; anything else fails here.
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| {
            Failure::invalid_block("the descriptor sent is not a memfd (it has no seals)")
        })?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(Failure::invalid_block(format!(
                "the memfd is not sealed against shrinking, growing and re-sealing (seals {seals:?})"
            )));
        }
        let mode = rustix::fs::fcntl_getfl(&fd).map_err(|e| {
            Failure::invalid_block(format!("cannot read the block's access mode: {e}"))
        })?;
        if mode & OFlags::RWMODE != OFlags::RDWR {
            return Err(Failure::invalid_block(
                "the memfd is not open for reading and writing",
            ));
        }
        if stat.st_size as u64 != size {
            return Err(Failure::invalid_block(format!(
                "the memfd holds {} bytes, not the {size} the request claims",
                stat.st_size
            )));
        }
        Ok(Block {
            fd,
            size,
            frozen: seals.contains(SealFlags::WRITE),
        })
    }
}
