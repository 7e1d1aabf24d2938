//! The per-thread last error of the C ABI (Linux has no `GetLastError`): a Win32 code, and the
//! reason in words for the last failure.

use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char};

use crate::error::Error;

thread_local! {
    static CODE: Cell<u32> = const { Cell::new(0) };
    static MESSAGE: RefCell<CString> = RefCell::new(CString::default());
}

/// Records a failure as this thread's last error.
pub(crate) fn fail(code: u32, message: &str) {
    CODE.with(|c| c.set(code));
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    MESSAGE.with(|m| *m.borrow_mut() = text);
}

/// Records `error` as this thread's last error.
pub(crate) fn fail_with(error: &Error) {
    fail(error.code(), &error.to_string());
}

pub(crate) fn code() -> u32 {
    CODE.with(Cell::get)
}

pub(crate) fn set_code(code: u32) {
    CODE.with(|c| c.set(code));
    MESSAGE.with(|m| *m.borrow_mut() = CString::default());
}

/// The message's address: valid until this thread's next failure or `shalloc_set_last_error`.
pub(crate) fn message() -> *const c_char {
    MESSAGE.with(|m| m.borrow().as_ptr())
}
