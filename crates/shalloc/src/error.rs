//! The error type of the Rust API, and the Win32 code each error stands for in the C ABI.

use shalloc_protocol::codes;

/// Why a shalloc call failed.
///
/// Every variant carries the reason in words; [`Error::code`] gives the Win32 error code the C
/// ABI reports for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process id names no process (it never existed, or it exited and was reaped).
    #[error("no such process: {reason}")]
    NoSuchProcess {
        /// Why, in words.
        reason: String,
    },
    /// The process exists, but the caller may not touch its table (another user, not dumpable,
    /// or a zombie).
    #[error("access denied: {reason}")]
    AccessDenied {
        /// Why, in words.
        reason: String,
    },
    /// The handle is not open in the named table (never was, or was freed).
    #[error("invalid handle: {reason}")]
    InvalidHandle {
        /// Why, in words.
        reason: String,
    },
    /// No broker could be reached or started.
    #[error("broker unavailable: {reason}")]
    BrokerUnavailable {
        /// Why, in words.
        reason: String,
    },
    /// The block is larger than the broker accepts.
    #[error("block too large: {size} bytes, the limit is {max}")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The broker's limit.
        max: u64,
    },
    /// The system ran out of memory for the block.
    #[error("out of memory: {reason}")]
    OutOfMemory {
        /// Why, in words.
        reason: String,
    },
    /// A table, the user or the broker is at its handle limit.
    #[error("too many handles: {reason}")]
    TooManyHandles {
        /// Why, in words.
        reason: String,
    },
    /// The broker answered something this client does not understand.
    #[error("protocol error: {reason}")]
    Protocol {
        /// Why, in words.
        reason: String,
    },
    /// A system call failed in this process.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
}

/// The result type of the Rust API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `ERROR_GEN_FAILURE`: a system call failed for a reason with no better Win32 code.
const ERROR_GEN_FAILURE: u32 = 31;

impl Error {
    /// The Win32 error code the C ABI reports for this error (see DESIGN.md §1).
    pub fn code(&self) -> u32 {
        match self {
            Error::NoSuchProcess { .. } => codes::ERROR_INVALID_PARAMETER,
            Error::AccessDenied { .. } => codes::ERROR_ACCESS_DENIED,
            Error::InvalidHandle { .. } => codes::ERROR_INVALID_HANDLE,
            Error::BrokerUnavailable { .. } => codes::ERROR_SERVICE_NOT_ACTIVE,
            Error::TooLarge { .. } | Error::OutOfMemory { .. } => codes::ERROR_NOT_ENOUGH_MEMORY,
            Error::TooManyHandles { .. } => codes::ERROR_NO_SYSTEM_RESOURCES,
            Error::Protocol { .. } => codes::ERROR_INVALID_DATA,
            Error::Io { .. } => ERROR_GEN_FAILURE,
        }
    }

    /// Turns a broker's failure reply into an error.
    pub(crate) fn from_broker(code: u32, reason: String) -> Error {
        match code {
            codes::ERROR_INVALID_PARAMETER => Error::NoSuchProcess { reason },
            codes::ERROR_ACCESS_DENIED => Error::AccessDenied { reason },
            codes::ERROR_INVALID_HANDLE => Error::InvalidHandle { reason },
            codes::ERROR_NOT_ENOUGH_MEMORY => Error::OutOfMemory { reason },
            codes::ERROR_NO_SYSTEM_RESOURCES => Error::TooManyHandles { reason },
            codes::ERROR_SERVICE_NOT_ACTIVE => Error::BrokerUnavailable { reason },
            other => Error::Protocol {
                reason: format!("broker error {other}: {reason}"),
            },
        }
    }

    /// Classifies a failed system call in this process: a shortage of memory or descriptors gets
    /// its own variant, anything else is [`Error::Io`].
    pub(crate) fn os(what: &'static str, errno: rustix::io::Errno) -> Error {
        use rustix::io::Errno;
        match errno {
            Errno::NOMEM | Errno::NOSPC => Error::OutOfMemory {
                reason: format!("{what}: {errno}"),
            },
            Errno::FBIG => Error::OutOfMemory {
                reason: format!("{what}: {errno}"),
            },
            Errno::MFILE | Errno::NFILE => Error::TooManyHandles {
                reason: format!("{what}: {errno}"),
            },
            _ => Error::Io {
                what,
                source: errno.into(),
            },
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
        Error::BrokerUnavailable {
            reason: reason.into(),
        }
    }
}
