//! What a descriptor must be before anyone takes it as a block: the rule the broker applies to
//! every block a client sends it, and a table's owner to every block another process sends it
//! over a channel ([`crate::channel`]).
//!
//! It must be a regular shmem file (a memfd: only shmem and hugetlbfs files have seals) open for
//! reading and writing, sealed so that no holder can shrink, grow or re-seal it — so no receiver can
//! be made to `SIGBUS` — with exactly the size its sender claims, within the receiver's cap.

use std::os::fd::AsFd;

use rustix::fs::{FileType, OFlags, SealFlags};

/// The seals every block must carry.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Why a descriptor is not a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotABlock {
    /// Larger than the receiver accepts.
    #[error("a block of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// The size claimed.
        size: u64,
        /// The receiver's cap.
        max: u64,
    },
    /// Not a regular file.
    #[error("the descriptor sent is not a regular file")]
    NotRegular,
    /// A regular file without seals: not a memfd.
    #[error("the descriptor sent is not a memfd (it has no seals)")]
    NotMemfd,
    /// A memfd missing some of [`REQUIRED_SEALS`].
    #[error("the memfd is not sealed against shrinking, growing and re-sealing (seals {0:?})")]
    Unsealed(SealFlags),
    /// Open read-only or write-only.
    #[error("the memfd is not open for reading and writing")]
    NotReadWrite,
    /// Its size is not the one claimed.
    #[error("the memfd holds {actual} bytes, not the {claimed} claimed")]
    WrongSize {
        /// The memfd's size.
        actual: u64,
        /// The size claimed.
        claimed: u64,
    },
    /// The descriptor could not be examined.
    #[error("cannot examine the descriptor ({call}): {errno}")]
    Unreadable {
        /// The call that failed.
        call: &'static str,
        /// Its error.
        errno: rustix::io::Errno,
    },
}

/// Checks `fd` as a block of `size` bytes, no larger than `max`: `Ok(frozen)`, where a frozen block
/// is also sealed against writing (`F_SEAL_WRITE`), so nobody may map it writable.
pub fn check(fd: impl AsFd, size: u64, max: u64) -> Result<bool, NotABlock> {
    let fd = fd.as_fd();
    if size > max {
        return Err(NotABlock::TooLarge { size, max });
    }
    let unreadable = |call| move |errno| NotABlock::Unreadable { call, errno };
    let stat = rustix::fs::fstat(fd).map_err(unreadable("fstat"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(NotABlock::NotRegular);
    }
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| NotABlock::NotMemfd)?;
    if !seals.contains(REQUIRED_SEALS) {
        return Err(NotABlock::Unsealed(seals));
    }
    let mode = rustix::fs::fcntl_getfl(fd).map_err(unreadable("F_GETFL"))?;
    if mode & OFlags::RWMODE != OFlags::RDWR {
        return Err(NotABlock::NotReadWrite);
    }
    let actual = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if actual != size {
        return Err(NotABlock::WrongSize {
            actual,
            claimed: size,
        });
    }
    Ok(seals.contains(SealFlags::WRITE))
}
