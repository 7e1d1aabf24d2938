//! What a descriptor must be before anyone takes it as a block: the rule the broker applies to
//! every block a client sends it, and a table's owner to every block another process sends it
//! over a channel ([`crate::channel`]).
//!
//! It must be a regular shmem file (a memfd: only shmem and hugetlbfs files have seals) open for
//! reading and writing, sealed so that no holder can shrink, grow or re-seal it — so no receiver can
//! be made to `SIGBUS` — within the receiver's cap, and as long as the size its sender claims, or as
//! long as that size's [class](class_bytes).
//!
//! Sizes and classes: a block's *size* is what its holders see (views map it, `SHGetSizeShared`
//! reports it); its memfd may be longer, by up to a quarter, so that a block of one size can be
//! recycled for another of the same class. Every byte past the size is zero, whoever reads the
//! memfd (the allocator's promise, see the client's block pool).

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
    /// Its size is neither the one claimed nor that size's class.
    #[error("the memfd holds {actual} bytes, not the {claimed} claimed (or their class)")]
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

/// The pages below which every page count is a class of its own.
const EXACT_PAGES: u64 = 4;
/// The unit classes are counted in: 4 KiB, whatever the machine's page size (a class need not be
/// a whole number of pages, only the same for everyone).
const CLASS_UNIT: u64 = 4096;

/// The memfd length of a block of `size` bytes that may be recycled: `size` rounded up to 4 KiB,
/// then (from 16 KiB) to one of four steps per doubling, so a class wastes at most a quarter of its
/// length (which costs no memory until written: the tail of a fresh block is a hole). 0 for 0.
///
/// ```
/// use shalloc_protocol::block::class_bytes;
/// assert_eq!(class_bytes(0), 0);
/// assert_eq!(class_bytes(64), 4096);
/// assert_eq!(class_bytes(4096), 4096);
/// assert_eq!(class_bytes(4097), 8192);
/// assert_eq!(class_bytes(64 << 10), 64 << 10);
/// assert_eq!(class_bytes((64 << 10) + 1), 80 << 10);
/// assert_eq!(class_bytes(1 << 20), 1 << 20);
/// ```
pub fn class_bytes(size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    let units = size.div_ceil(CLASS_UNIT);
    if units <= EXACT_PAGES {
        return units * CLASS_UNIT;
    }
    // Four steps per doubling: a step is a quarter of the largest power of two not above `units`.
    let step = 1u64 << (63 - units.leading_zeros() - 2);
    units
        .div_ceil(step)
        .saturating_mul(step)
        .saturating_mul(CLASS_UNIT)
}

/// Checks `fd` as a block of `size` bytes, no larger than `max`: `Ok(frozen)`, where a frozen block
/// is also sealed against writing (`F_SEAL_WRITE`), so nobody may map it writable.
pub fn check(fd: impl AsFd, size: u64, max: u64) -> Result<bool, NotABlock> {
    check_and_identify(fd, size, max).map(|(frozen, _)| frozen)
}

/// As [`check`], also returning the memfd's (device, inode).
pub fn check_and_identify(
    fd: impl AsFd,
    size: u64,
    max: u64,
) -> Result<(bool, (u64, u64)), NotABlock> {
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
    if actual != size && actual != class_bytes(size) {
        return Err(NotABlock::WrongSize {
            actual,
            claimed: size,
        });
    }
    Ok((seals.contains(SealFlags::WRITE), (stat.st_dev, stat.st_ino)))
}
