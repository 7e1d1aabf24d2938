//! Win32 error codes, as `GetLastError` would report them on Windows.
//!
//! The broker answers a failed request with one of these, and the C ABI stores it as the calling
//! thread's last error, so both sides must agree on the numbers.

/// A handle that names no live block in the given table.
pub const ERROR_INVALID_HANDLE: u32 = 6;
/// A process id that names no process (never existed, or exited and was reaped).
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// A live process whose table the caller may not touch, or a zombie.
pub const ERROR_ACCESS_DENIED: u32 = 5;
/// Out of memory, or a block larger than the broker allows.
pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
/// A table or a user over its handle limit, or the broker out of descriptors.
pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
/// No broker could be reached or started.
pub const ERROR_SERVICE_NOT_ACTIVE: u32 = 1062;
/// A pointer that is not inside (or, for sizing, not at the start of) a live view.
pub const ERROR_INVALID_ADDRESS: u32 = 487;
/// A peer broke the protocol: a frame that does not decode, or an answer to another question.
pub const ERROR_INVALID_DATA: u32 = 13;
/// The broker and the client speak different protocol versions.
pub const ERROR_REVISION_MISMATCH: u32 = 1306;
