//! The C ABI: the `SHAllocShared` family with the Win32 signatures, exported from libshalloc.so and
//! libshalloc.a, declared in the generated `include/shalloc.h`.
//!
//! Every failure sets the calling thread's last error ([`shalloc_last_error`]) to the Win32 code
//! Windows would set and records the reason ([`shalloc_last_error_message`]); success leaves both
//! alone, and so do `SHFreeShared(NULL, …)` (TRUE) and `SHMapHandle(NULL, …)` (NULL).

#![allow(non_snake_case, non_camel_case_types, clippy::upper_case_acronyms)]

mod extensions;
mod last_error;

pub use extensions::*;

use std::ffi::{c_char, c_void};

use shalloc_protocol::codes;

use crate::api;
use crate::block::Contents;
use crate::error::Error;
use crate::ids::{Handle, Pid};
use crate::views::{self, NotAView, Owner};

/// A handle value: pointer-sized, as on Windows; shalloc's values are below 2^31.
pub type HANDLE = *mut c_void;
/// A 32-bit unsigned integer.
pub type DWORD = u32;
/// A Win32 boolean: 0 is false, anything else true.
pub type BOOL = i32;
/// A pointer to anything.
pub type LPVOID = *mut c_void;
/// A pointer to anything constant.
pub type LPCVOID = *const c_void;
/// A size in bytes.
pub type SIZE_T = usize;

/// The Win32 true.
pub const TRUE: BOOL = 1;
/// The Win32 false.
pub const FALSE: BOOL = 0;
/// Last error: the handle is not open in the named table.
pub const ERROR_INVALID_HANDLE: DWORD = 6;
/// Last error: the process id names no process.
pub const ERROR_INVALID_PARAMETER: DWORD = 87;
/// Last error: the process's table is closed to the caller (another user, not dumpable, a zombie).
pub const ERROR_ACCESS_DENIED: DWORD = 5;
/// Last error: out of memory, or a block larger than the broker allows.
pub const ERROR_NOT_ENOUGH_MEMORY: DWORD = 8;
/// Last error: a table, the user or the broker is at its handle limit.
pub const ERROR_NO_SYSTEM_RESOURCES: DWORD = 1450;
/// Last error: no broker could be reached or started.
pub const ERROR_SERVICE_NOT_ACTIVE: DWORD = 1062;
/// Last error: the pointer is in no live view (unlock), or not at the start of one (size).
pub const ERROR_INVALID_ADDRESS: DWORD = 487;

/// `SHMapHandle` option: close the handle in the source table after duplicating it.
pub const DUPLICATE_CLOSE_SOURCE: DWORD = 0x1;

/// The handle value a HANDLE carries, or the error for one that cannot be a handle.
fn handle_of(h: HANDLE) -> Result<Handle, Error> {
    let raw = h as usize;
    u32::try_from(raw)
        .ok()
        .and_then(Handle::from_raw)
        .ok_or_else(|| Error::InvalidHandle {
            reason: format!("{raw:#x} is not a handle value"),
        })
}

fn as_handle(h: Handle) -> HANDLE {
    h.as_raw() as usize as HANDLE
}

/// Runs `f`; on failure records the error and returns `failed`.
fn report<T>(failed: T, f: impl FnOnce() -> Result<T, Error>) -> T {
    f().unwrap_or_else(|e| {
        last_error::fail_with(&e);
        failed
    })
}

/// Creates a block of `dwSize` bytes, copies `dwSize` bytes from `pvData` into it (or zero-fills it
/// when `pvData` is NULL), and creates a handle to it in the table of process `dwProcessId`.
///
/// Returns the handle, valid in that process's table; NULL on failure.
///
/// # Safety
/// `pvData` is NULL or points to `dwSize` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SHAllocShared(
    pvData: LPCVOID,
    dwSize: DWORD,
    dwProcessId: DWORD,
) -> HANDLE {
    // SAFETY: the caller guarantees what alloc_from requires.
    unsafe { alloc_from(pvData, dwSize, dwProcessId, false) }
}

/// `SHAllocShared` and `shalloc_alloc_frozen`: a block from `pvData` (zero-filled when NULL).
///
/// # Safety
/// `pvData` is NULL or points to `dwSize` readable bytes.
unsafe fn alloc_from(pvData: LPCVOID, dwSize: DWORD, dwProcessId: DWORD, frozen: bool) -> HANDLE {
    report(std::ptr::null_mut(), || {
        let contents = if pvData.is_null() {
            Contents::Zeroed(u64::from(dwSize))
        } else {
            // SAFETY: the caller guarantees dwSize readable bytes at pvData.
            Contents::Bytes(unsafe {
                std::slice::from_raw_parts(pvData.cast::<u8>(), dwSize as usize)
            })
        };
        api::alloc_contents(contents, Pid::from_raw(dwProcessId), frozen).map(as_handle)
    })
}

/// Maps the block of handle `hData`, in the table of process `dwProcessId`, into the calling
/// process as a new read/write view.
///
/// Returns the view's first byte; NULL on failure.
#[unsafe(no_mangle)]
pub extern "C" fn SHLockShared(hData: HANDLE, dwProcessId: DWORD) -> LPVOID {
    SHLockSharedEx(hData, dwProcessId, TRUE)
}

/// As `SHLockShared`, but the view is read-only when `bWrite` is FALSE (a write through it faults).
#[unsafe(no_mangle)]
pub extern "C" fn SHLockSharedEx(hData: HANDLE, dwProcessId: DWORD, bWrite: BOOL) -> LPVOID {
    report(std::ptr::null_mut(), || {
        let handle = handle_of(hData)?;
        let mapped = api::lock_raw(
            handle,
            Pid::from_raw(dwProcessId),
            bWrite != FALSE,
            Owner::C,
        )?;
        Ok(mapped.ptr.as_ptr().cast())
    })
}

fn not_a_view(addr: usize, why: NotAView) -> String {
    match why {
        NotAView::Unknown => format!("{addr:#x} is inside no view made by SHLockShared"),
        NotAView::OwnedByRust => format!("{addr:#x} is inside a view owned by a Rust View guard"),
    }
}

/// Unmaps the view that contains `pvData` (normally the pointer `SHLockShared` returned).
///
/// Returns TRUE; FALSE for NULL or a pointer inside no live view made by `SHLockShared` (nothing
/// is unmapped then).
#[unsafe(no_mangle)]
pub extern "C" fn SHUnlockShared(pvData: LPVOID) -> BOOL {
    let addr = pvData as usize;
    match views::unmap_containing(addr, Owner::C) {
        Ok(()) => TRUE,
        Err(why) => {
            last_error::fail(codes::ERROR_INVALID_ADDRESS, &not_a_view(addr, why));
            FALSE
        }
    }
}

/// Closes handle `hData` in the table of process `dwProcessId`, whichever process allocated it.
///
/// Returns TRUE on success, and for a NULL handle (leaving the last error untouched); FALSE for an
/// unknown or already closed handle.
#[unsafe(no_mangle)]
pub extern "C" fn SHFreeShared(hData: HANDLE, dwProcessId: DWORD) -> BOOL {
    if hData.is_null() {
        return TRUE;
    }
    report(FALSE, || {
        api::free(handle_of(hData)?, Pid::from_raw(dwProcessId))?;
        Ok(TRUE)
    })
}

/// Duplicates handle `hData` from the table of process `dwSourceProcessId` into the table of
/// process `dwDestinationProcessId`. `dwDesiredAccess` is ignored (the copy has the same access);
/// `dwOptions` may hold `DUPLICATE_CLOSE_SOURCE`, which closes the original afterwards.
///
/// Returns the new handle, valid in the destination's table; NULL for a NULL handle (leaving the
/// last error untouched) and on failure.
#[unsafe(no_mangle)]
pub extern "C" fn SHMapHandle(
    hData: HANDLE,
    dwSourceProcessId: DWORD,
    dwDestinationProcessId: DWORD,
    dwDesiredAccess: DWORD,
    dwOptions: DWORD,
) -> HANDLE {
    let _ = dwDesiredAccess;
    if hData.is_null() {
        return std::ptr::null_mut();
    }
    report(std::ptr::null_mut(), || {
        let handle = handle_of(hData)?;
        let from = Pid::from_raw(dwSourceProcessId);
        let new = api::map_handle(handle, from, Pid::from_raw(dwDestinationProcessId))?;
        if dwOptions & DUPLICATE_CLOSE_SOURCE != 0 {
            api::free(handle, from)?;
        }
        Ok(as_handle(new))
    })
}

/// The size in bytes of the block whose view starts at `pvData`.
///
/// Returns 0 (and sets `ERROR_INVALID_ADDRESS`) for a pointer that is not the start of a live view.
#[unsafe(no_mangle)]
pub extern "C" fn SHGetSizeShared(pvData: LPCVOID) -> SIZE_T {
    match views::size_at(pvData as usize) {
        Some(size) => size as SIZE_T,
        None => {
            let reason = format!("{:#x} is not the start of a live view", pvData as usize);
            last_error::fail(codes::ERROR_INVALID_ADDRESS, &reason);
            0
        }
    }
}

/// The calling thread's last error: the Win32 code of its last failed call.
#[unsafe(no_mangle)]
pub extern "C" fn shalloc_last_error() -> DWORD {
    last_error::code()
}

/// Sets the calling thread's last error (and clears its message), as `SetLastError` does.
#[unsafe(no_mangle)]
pub extern "C" fn shalloc_set_last_error(code: DWORD) {
    last_error::set_code(code);
}

/// The reason for the calling thread's last failure, in words ("" when there is none). The string
/// stays valid until the thread's next failure or `shalloc_set_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn shalloc_last_error_message() -> *const c_char {
    last_error::message()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_codes_match_the_protocol() {
        assert_eq!(ERROR_INVALID_HANDLE, codes::ERROR_INVALID_HANDLE);
        assert_eq!(ERROR_INVALID_PARAMETER, codes::ERROR_INVALID_PARAMETER);
        assert_eq!(ERROR_ACCESS_DENIED, codes::ERROR_ACCESS_DENIED);
        assert_eq!(ERROR_NOT_ENOUGH_MEMORY, codes::ERROR_NOT_ENOUGH_MEMORY);
        assert_eq!(ERROR_NO_SYSTEM_RESOURCES, codes::ERROR_NO_SYSTEM_RESOURCES);
        assert_eq!(ERROR_SERVICE_NOT_ACTIVE, codes::ERROR_SERVICE_NOT_ACTIVE);
        assert_eq!(ERROR_INVALID_ADDRESS, codes::ERROR_INVALID_ADDRESS);
    }

    #[test]
    fn handles_that_cannot_be_values_are_invalid() {
        assert!(handle_of(std::ptr::null_mut()).is_err());
        assert!(handle_of(usize::MAX as HANDLE).is_err());
        assert!(handle_of(0x1_0000_0000usize as HANDLE).is_err());
        assert_eq!(
            handle_of(0x40 as HANDLE).map(Handle::as_raw).ok(),
            Some(0x40)
        );
    }
}
