//! [`View`]: a block mapped into this process, unmapped when the guard drops.

use std::fmt;
use std::ptr::NonNull;

use crate::copy;
use crate::views::{self, Owner};

/// A mapping of a block into this process, made by [`lock`](crate::lock) or
/// [`lock_read_only`](crate::lock_read_only). Dropping it unmaps the view; nothing else can (the C
/// `SHUnlockShared` refuses views that belong to a guard).
///
/// Other processes may write the block at any moment, so a `View` hands out copies, not
/// references: [`read_at`](View::read_at), [`write_at`](View::write_at) and
/// [`to_vec`](View::to_vec) are safe, and race-free in Rust's sense even while another process
/// writes (they use atomic accesses). Raw access is available through the `unsafe`
/// [`as_slice`](View::as_slice) and [`as_mut_slice`](View::as_mut_slice), under the rule they state.
pub struct View {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    frozen: bool,
}

// SAFETY: a View is an address range owned by this guard; every access through it is a copy with
// atomic loads/stores, so moving it to or sharing it with another thread adds no data race that
// other processes could not already cause.
unsafe impl Send for View {}
// SAFETY: see Send: `&View` only allows atomic copies in and out.
unsafe impl Sync for View {}

/// Why a copy into or out of a view was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The range does not fit inside the block.
    #[error("{len} bytes at offset {offset} do not fit in a block of {size} bytes")]
    OutOfBounds {
        /// Where the range starts.
        offset: usize,
        /// How long it is.
        len: usize,
        /// The block's size.
        size: usize,
    },
    /// The view was mapped read-only.
    #[error("the view is read-only")]
    ReadOnly,
}

impl View {
    pub(crate) fn new(ptr: NonNull<u8>, len: usize, writable: bool, frozen: bool) -> View {
        View {
            ptr,
            len,
            writable,
            frozen,
        }
    }

    /// Whether the block is frozen: its descriptor carries `F_SEAL_WRITE`, so the kernel lets
    /// nobody change it. Decided from the descriptor this process received, never from a flag
    /// someone sent.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The block as a byte slice, when it is frozen (`None` otherwise): the safe zero-copy case,
    /// sound because no process can write a write-sealed block.
    pub fn frozen_bytes(&self) -> Option<&[u8]> {
        // SAFETY: the mapping covers len bytes for the guard's life, and F_SEAL_WRITE (checked on
        // the received descriptor) means no write() and no writable shared mapping can exist.
        self.frozen
            .then(|| unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// The block's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the view was mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), ViewError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ViewError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the block.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), ViewError> {
        self.check(offset, buf.len())?;
        // SAFETY: the range was just checked to lie inside the mapping, which lives as long as self.
        unsafe { copy::from_shared(buf, self.ptr.as_ptr().add(offset)) };
        Ok(())
    }

    /// Copies `data` into the block at `offset`. Every process that maps the block sees it.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), ViewError> {
        if !self.writable {
            return Err(ViewError::ReadOnly);
        }
        self.check(offset, data.len())?;
        // SAFETY: the range lies inside the mapping, which is writable and lives as long as self.
        unsafe { copy::to_shared(self.ptr.as_ptr().add(offset), data) };
        Ok(())
    }

    /// A copy of the whole block.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        // SAFETY: the whole block is mapped for as long as self lives.
        unsafe { copy::from_shared(&mut out, self.ptr.as_ptr()) };
        out
    }

    /// The first byte of the view. Valid for [`len`](View::len) bytes while the guard lives.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte of the view, for writing (only when [`is_writable`](View::is_writable)).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The block as a byte slice.
    ///
    /// # Safety
    /// No process (this one included, through another view) may write the block while the slice
    /// lives: Rust assumes the bytes behind a `&[u8]` do not change.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping covers len bytes for the guard's life; the caller rules out writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The block as a mutable byte slice.
    ///
    /// # Safety
    /// No other process or view may read or write the block while the slice lives, and the view
    /// must be writable (writing a read-only view faults).
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping covers len bytes for the guard's life; the caller rules out others.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // Only fails if the registry lost the view, which would be a bug; nothing to do then.
        let _ = views::unmap_containing(self.ptr.as_ptr() as usize, Owner::Rust);
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .field("frozen", &self.frozen)
            .finish()
    }
}
