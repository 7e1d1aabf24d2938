//! Checking a descriptor a client sent before it becomes a block.
//!
//! The broker trusts nothing about it: the rule is [`shalloc_protocol::block::check`] (a regular
//! shmem file open for reading and writing, sealed against shrinking, growing and re-sealing, with
//! exactly the size the request claims, within the broker's cap).

use std::os::fd::OwnedFd;

use shalloc_protocol::block::{self, NotABlock};

use crate::failure::Failure;

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
        match block::check(&fd, size, max) {
            Ok(frozen) => Ok(Block { fd, size, frozen }),
            Err(e @ NotABlock::TooLarge { .. }) => Err(Failure::too_large(e.to_string())),
            Err(e) => Err(Failure::invalid_block(e.to_string())),
        }
    }
}
