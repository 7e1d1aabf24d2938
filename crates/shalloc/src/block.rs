//! Making a block: a memfd created, filled and sealed by the allocating process, before any other
//! process can receive it.

use std::os::fd::OwnedFd;

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The seals every block carries: nobody can shrink it (no `SIGBUS` for a reader), grow it, or add
/// seals (such as a write seal that would break other holders' writable views).
pub(crate) const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A filled, sealed memfd of `size` bytes.
pub(crate) struct SealedBlock {
    pub fd: OwnedFd,
    pub size: u64,
}

/// What goes into a new block.
pub(crate) enum Contents<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// This many zero bytes.
    Zeroed(u64),
}

impl SealedBlock {
    /// Creates the memfd and fills it. Filling uses `pwrite` (or `fallocate` for zeroes), so a
    /// shortage of memory is an error here rather than a `SIGBUS` on first touch in a reader.
    pub fn new(contents: Contents<'_>) -> Result<SealedBlock> {
        let fd =
            rustix::fs::memfd_create("shalloc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .map_err(|e| Error::os("memfd_create", e))?;
        let size = match contents {
            Contents::Bytes(data) => {
                write_all(&fd, data)?;
                data.len() as u64
            }
            Contents::Zeroed(0) => 0,
            Contents::Zeroed(len) => {
                rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len)
                    .map_err(|e| Error::os("fallocate", e))?;
                len
            }
        };
        rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(|e| Error::os("sealing the memfd", e))?;
        Ok(SealedBlock { fd, size })
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<()> {
    let mut offset = 0u64;
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
        let block = SealedBlock::new(Contents::Bytes(b"0123456789")).expect("block");
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
    fn zeroed_blocks_are_zero_and_sized() {
        let block = SealedBlock::new(Contents::Zeroed(8192)).expect("block");
        let mut buf = vec![1u8; 8192];
        assert_eq!(rustix::io::pread(&block.fd, &mut buf, 0), Ok(8192));
        assert!(buf.iter().all(|b| *b == 0));
        let empty = SealedBlock::new(Contents::Zeroed(0)).expect("empty block");
        assert_eq!(empty.size, 0);
    }
}
