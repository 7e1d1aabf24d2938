//! A fresh block: a memfd created, filled and sealed by the allocating process, before any other
//! process can receive it.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;

use super::Contents;
use super::mapping::Mapping;
use crate::error::{Error, Result};

/// The seals every block carries: nobody can shrink it (no `SIGBUS` for a reader), grow it, or add
/// seals (such as a write seal that would break other holders' writable views).
pub(crate) const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A filled, sealed memfd of `size` bytes (and `len` bytes long: `size`, or its class).
pub(crate) struct SealedBlock {
    pub fd: OwnedFd,
    pub size: u64,
    pub len: u64,
}

impl SealedBlock {
    /// Creates the memfd and fills it, then makes it `len` bytes long (at least the contents'
    /// size: the tail is a hole, zero and costing nothing) and seals it (against writing too when
    /// `frozen`).
    ///
    /// Filling uses `pwrite`, or `fallocate` before any page is touched, so a shortage of memory is
    /// an error here rather than a `SIGBUS` in a reader (or in the fill function).
    #[cfg(test)]
    pub fn new(contents: Contents<'_>, frozen: bool, len: u64) -> Result<SealedBlock> {
        let fd = SealedBlock::create(reserved_by(&contents))?;
        SealedBlock::finish(fd, contents, frozen, len)
    }

    /// The first step of [`new`](SealedBlock::new): a memfd with `reserve` bytes of pages
    /// allocated (a shortage of memory fails here, before any contents are consumed).
    pub fn create(reserve: u64) -> Result<OwnedFd> {
        let fd =
            rustix::fs::memfd_create(c"shalloc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .map_err(|e| Error::os("memfd_create", e))?;
        if reserve > 0 {
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, reserve)
                .map_err(|e| Error::os("fallocate", e))?;
        }
        Ok(fd)
    }

    /// The second step: fills `fd`, made by [`create`](SealedBlock::create) with
    /// [`reserved_by`]`(&contents)` bytes reserved, then sizes and seals it.
    pub fn finish(
        fd: OwnedFd,
        contents: Contents<'_>,
        frozen: bool,
        len: u64,
    ) -> Result<SealedBlock> {
        let size = contents.len();
        match contents {
            Contents::Bytes(data) => write_all(&fd, data, 0)?,
            Contents::Zeroed(_) => {}
            Contents::Filled(0, fill) => fill(&mut []),
            Contents::Filled(len, fill) => {
                let mut map = Mapping::new(fd.as_fd(), len, true)?;
                map.populate_for_writing();
                // SAFETY: nobody else can reach these bytes: the memfd is close-on-exec, was never
                // sent, and this is its only mapping (dropped before this arm ends).
                fill(unsafe { map.bytes_mut(usize::try_from(len).unwrap_or(usize::MAX)) });
                // Unmapped before sealing: F_SEAL_WRITE needs no writable mapping to exist.
                drop(map);
            }
        }
        let len = len.max(size);
        if len > size {
            rustix::fs::ftruncate(&fd, len).map_err(|e| Error::os("ftruncate", e))?;
        }
        let seals = if frozen {
            SEALS | SealFlags::WRITE
        } else {
            SEALS
        };
        rustix::fs::fcntl_add_seals(&fd, seals).map_err(|e| Error::os("sealing the memfd", e))?;
        Ok(SealedBlock { fd, size, len })
    }
}

/// The bytes [`SealedBlock::create`] must reserve for `contents`: all of them, but for bytes
/// written with `pwrite` (which allocates as it goes, and fails cleanly when it cannot).
pub(crate) fn reserved_by(contents: &Contents<'_>) -> u64 {
    match contents {
        Contents::Bytes(_) => 0,
        Contents::Zeroed(len) | Contents::Filled(len, _) => *len,
    }
}

/// Writes all of `data` at `offset`.
pub(super) fn write_all(fd: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(Error::os("pwrite", Errno::NOSPC)),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::os("pwrite", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_cannot_resize_or_reseal_a_block() {
        let block = SealedBlock::new(Contents::Bytes(b"0123456789"), false, 0).expect("block");
        assert_eq!(rustix::fs::fstat(&block.fd).expect("stat").st_size, 10);
        assert_eq!(
            rustix::fs::ftruncate(&block.fd, 5),
            Err(Errno::PERM),
            "shrink"
        );
        assert_eq!(
            rustix::fs::ftruncate(&block.fd, 4096),
            Err(Errno::PERM),
            "grow"
        );
        assert_eq!(
            rustix::io::pwrite(&block.fd, b"x", 10),
            Err(Errno::PERM),
            "grow by writing past the end"
        );
        assert_eq!(
            rustix::fs::fcntl_add_seals(&block.fd, SealFlags::WRITE),
            Err(Errno::PERM),
            "re-seal"
        );
        assert_eq!(
            rustix::io::pwrite(&block.fd, b"X", 0),
            Ok(1),
            "writing inside the block is allowed"
        );
    }

    #[test]
    fn frozen_blocks_cannot_be_written_at_all() {
        let block = SealedBlock::new(Contents::Bytes(b"ice"), true, 0).expect("block");
        assert_eq!(rustix::io::pwrite(&block.fd, b"X", 0), Err(Errno::PERM));
        // SAFETY: a new mapping; the call is expected to fail.
        let writable = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                3,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &block.fd,
                0,
            )
        };
        assert_eq!(writable.err(), Some(Errno::PERM));
    }

    #[test]
    fn filled_blocks_hold_what_the_fill_wrote() {
        let block = SealedBlock::new(
            Contents::Filled(5, Box::new(|b: &mut [u8]| b.copy_from_slice(b"fill!"))),
            true,
            0,
        )
        .expect("block");
        let mut buf = [0u8; 5];
        assert_eq!(rustix::io::pread(&block.fd, &mut buf, 0), Ok(5));
        assert_eq!(&buf, b"fill!");
    }

    #[test]
    fn a_block_made_a_class_long_reads_zero_past_its_size() {
        let block = SealedBlock::new(Contents::Bytes(b"abc"), false, 4096).expect("block");
        assert_eq!((block.size, block.len), (3, 4096));
        assert_eq!(rustix::fs::fstat(&block.fd).expect("stat").st_size, 4096);
        let mut buf = vec![1u8; 4096];
        assert_eq!(rustix::io::pread(&block.fd, &mut buf, 0), Ok(4096));
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..].iter().all(|b| *b == 0));
    }

    #[test]
    fn zeroed_blocks_are_zero_and_sized() {
        let block = SealedBlock::new(Contents::Zeroed(8192), false, 0).expect("block");
        let mut buf = vec![1u8; 8192];
        assert_eq!(rustix::io::pread(&block.fd, &mut buf, 0), Ok(8192));
        assert!(buf.iter().all(|b| *b == 0));
        let empty = SealedBlock::new(Contents::Zeroed(0), false, 0).expect("empty block");
        assert_eq!(empty.size, 0);
    }
}
