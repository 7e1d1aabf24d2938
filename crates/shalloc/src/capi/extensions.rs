//! What shalloc offers beyond Windows, for C: frozen blocks and in-place fill. These carry the
//! `shalloc_` prefix, never an `SH` name Windows might one day give another meaning.

use std::ffi::c_void;

use super::{
    BOOL, DWORD, FALSE, HANDLE, LPCVOID, LPVOID, SIZE_T, TRUE, as_handle, last_error, report,
};
use crate::api;
use crate::block::Contents;
use crate::ids::Pid;
use crate::views;

/// Last error: the fill function of `shalloc_alloc_with` returned FALSE.
pub const ERROR_CANCELLED: DWORD = 1223;

/// The fill function of `shalloc_alloc_with`: writes `size` bytes at `buffer` (which start
/// zeroed) and returns TRUE, or returns FALSE to abandon the block.
pub type shalloc_fill_fn =
    Option<unsafe extern "C" fn(buffer: LPVOID, size: SIZE_T, context: LPVOID) -> BOOL>;

/// As `SHAllocShared`, but the block is frozen: sealed against writing (`F_SEAL_WRITE`) before any
/// other process can receive it, so nobody can ever change it. It can only be locked read-only
/// (`SHLockSharedEx(h, pid, FALSE)`); `SHLockShared` fails with `ERROR_ACCESS_DENIED`.
///
/// # Safety
/// `pvData` is NULL or points to `dwSize` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shalloc_alloc_frozen(
    pvData: LPCVOID,
    dwSize: DWORD,
    dwProcessId: DWORD,
) -> HANDLE {
    // SAFETY: the caller guarantees what alloc_from requires.
    unsafe { super::alloc_from(pvData, dwSize, dwProcessId, true) }
}

/// Makes a block of `dwSize` bytes and calls `fill(buffer, dwSize, context)` to write it in place,
/// with no intermediate copy; nobody else can see the block until `fill` returns. The pages are
/// reserved first, so a shortage of memory fails here (NULL, `ERROR_NOT_ENOUGH_MEMORY`), never
/// inside `fill`. When `bFrozen` is TRUE the block is frozen after the fill. Returns the handle in
/// the table of `dwProcessId`; NULL when `fill` is NULL, returns FALSE (`ERROR_CANCELLED`), or the
/// allocation fails.
///
/// # Safety
/// `fill` must be a valid function that writes at most `size` bytes at `buffer` and does not keep
/// the pointer after it returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shalloc_alloc_with(
    dwSize: DWORD,
    dwProcessId: DWORD,
    bFrozen: BOOL,
    fill: shalloc_fill_fn,
    context: LPVOID,
) -> HANDLE {
    let Some(fill) = fill else {
        last_error::fail(
            super::ERROR_INVALID_PARAMETER,
            "shalloc_alloc_with: the fill function is NULL",
        );
        return std::ptr::null_mut();
    };
    let kept = std::cell::Cell::new(TRUE);
    let handle = report(std::ptr::null_mut(), || {
        let contents = Contents::Filled(
            u64::from(dwSize),
            Box::new(|buf: &mut [u8]| {
                // SAFETY: buf is len writable bytes for the duration of the call; the caller
                // guarantees fill stays within them and does not keep the pointer.
                kept.set(unsafe { fill(buf.as_mut_ptr().cast::<c_void>(), buf.len(), context) });
            }),
        );
        // A FALSE from fill abandons the block: it is made, but never given a handle.
        api::alloc_contents_if(
            contents,
            Pid::from_raw(dwProcessId),
            bFrozen != FALSE,
            || kept.get() != FALSE,
        )
        .map(|h| h.map_or(std::ptr::null_mut(), as_handle))
    });
    if handle.is_null() && kept.get() == FALSE {
        last_error::fail(
            ERROR_CANCELLED,
            "the fill function returned FALSE; no block was made",
        );
    }
    handle
}

/// Whether the view containing `pvData` shows a frozen block: TRUE only when the block's
/// descriptor carries `F_SEAL_WRITE`. FALSE for a block that is not frozen, and for a pointer in no
/// view (then with `ERROR_INVALID_ADDRESS`).
#[unsafe(no_mangle)]
pub extern "C" fn shalloc_is_frozen(pvData: LPCVOID) -> BOOL {
    match views::frozen_at(pvData as usize) {
        Some(true) => TRUE,
        Some(false) => FALSE,
        None => {
            let reason = format!("{:#x} is inside no live view", pvData as usize);
            last_error::fail(super::ERROR_INVALID_ADDRESS, &reason);
            FALSE
        }
    }
}
