//! [`Mapping`]: a shared mapping of a block that this process keeps from one use to the next.
//!
//! Mapping a block and faulting its pages in costs more than reading them (a 1 MiB block: ~60 µs
//! of ~100 µs here), and `pwrite` into warm pages costs ~3.5× a copy into a mapping whose pages
//! are already in the page tables. So a recycled block keeps its mapping: in the process that made
//! it (refilled through it, and shown through it by a view of the own table), and in the process it
//! was lent to (shown through it again when the block comes back for that process).
//!
//! A kept mapping is never shown by two views at once, and is unmapped when its block is closed
//! or evicted, or when it cannot serve again (its block may no longer be recycled, or 64 mappings
//! of live blocks wait already). A forked child drops the pool's and the given-back ones it
//! inherited at once, and the others with their blocks. It is not a view: nobody
//! reaches it but through the view that borrows it, and a block comes back for reuse only once
//! that view has ended. Only Rust `View`s borrow it (a C view is unmapped at `SHUnlockShared`):
//! safe code cannot use a `View`'s pointer after the drop; a raw pointer kept past it would still
//! read the block, and only ever blocks this process may see (see the pool for why).

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Error, Result};

/// A shared mapping of a whole number of pages of a memfd, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    write: bool,
}

// SAFETY: a `Mapping` is an address range this value alone unmaps; the bytes it shows are shared
// memory, read and written only through raw pointers (never through references that outlive a
// call), so moving it or sharing it between threads is no different from doing so with the
// address.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` allows only reading the address and the length, and the raw
// writes of `copy_in`/`zero`, which callers make only while no other thread uses the block.
unsafe impl Sync for Mapping {}

/// `len` rounded up to whole pages.
pub(crate) fn pages(len: u64) -> u64 {
    let page = rustix::param::page_size() as u64;
    len.div_ceil(page).saturating_mul(page)
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (rounded up to pages; `len` > 0), read/write or
    /// read-only.
    pub fn new(fd: BorrowedFd<'_>, len: u64, write: bool) -> Result<Mapping> {
        let too_large = || Error::TooLarge {
            size: len,
            max: usize::MAX as u64,
        };
        let len = usize::try_from(pages(len)).map_err(|_| too_large())?;
        if len == 0 {
            return Err(Error::os("mmap", rustix::io::Errno::INVAL));
        }
        let prot = if write {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new shared mapping at an address the kernel picks affects no existing memory;
        // every block is sealed against shrinking, so each mapped byte stays backed (the last
        // page's part past the end reads as zero).
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
                .map_err(|e| Error::os("mmap", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::os("mmap", rustix::io::Errno::INVAL))?;
        Ok(Mapping { ptr, len, write })
    }

    /// One inaccessible anonymous page: what a view of an empty block shows, so that every lock
    /// still returns a distinct, non-null address.
    pub fn inaccessible_page() -> Result<Mapping> {
        let len = rustix::param::page_size();
        // SAFETY: a fresh anonymous mapping at an address the kernel picks affects no existing
        // memory.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| Error::os("mmap", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::os("mmap", rustix::io::Errno::INVAL))?;
        Ok(Mapping {
            ptr,
            len,
            write: false,
        })
    }

    /// Faults every page in for writing now. Only advice: before a function fills the block in
    /// place, this is 5–19% faster than one fault per page as it writes (measured; `MAP_POPULATE`
    /// is not), and a kernel without it (`EINVAL` before 5.14) faults the pages in as it goes.
    pub fn populate_for_writing(&self) {
        // SAFETY: advice on exactly this mapping; it changes no contents.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }

    /// The first mapped byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The bytes mapped (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is mapped read/write.
    pub fn writable(&self) -> bool {
        self.write
    }

    /// Copies `data` to offset `at`. Only for a writable mapping, with `at + data.len()` within
    /// it (else nothing is written and `false` comes back).
    pub fn copy_in(&self, at: usize, data: &[u8]) -> bool {
        if !self.write || at.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: [at, at + data.len()) lies within the read/write mapping (checked above), which
        // lives as long as self, and `data` is readable for its length; `copy` allows the two to
        // overlap (only a caller holding a pointer past its unlock could make them).
        unsafe { std::ptr::copy(data.as_ptr(), self.ptr.as_ptr().add(at), data.len()) };
        true
    }

    /// Writes zeros over `[from, to)`, under the same conditions as [`copy_in`](Mapping::copy_in).
    pub fn zero(&self, from: usize, to: usize) -> bool {
        if !self.write || from > to || to > self.len {
            return false;
        }
        // SAFETY: [from, to) lies within the read/write mapping (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(from), 0, to - from) };
        true
    }

    /// The first `len` bytes (at most the mapping's) as a mutable slice, for a function that fills
    /// a block in place.
    ///
    /// # Safety
    /// The mapping must be writable, and no other reference to these bytes may exist while the
    /// slice lives: the block is being made, so no view of it is live and no other process may
    /// write it.
    pub unsafe fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.len)) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mapped in `new`, unmapped once; nothing borrows it any more
        // (views that borrowed it returned it before their block could be dropped).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
