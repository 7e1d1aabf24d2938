//! A failed request: the Win32 code the client will report and the reason in words.

use shalloc_protocol::codes;
use shalloc_protocol::wire::Reply;

/// Why the broker refused a request. It becomes a [`Reply::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: u32,
    pub reason: String,
    /// The answer depends on a table's owner that is putting a block from a channel into its slot
    /// right now: the request waits for it (and gets this failure only if the owner never does).
    pub owner_busy: bool,
}

impl Failure {
    pub fn no_such_process(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_INVALID_PARAMETER,
            reason: reason.into(),
            owner_busy: false,
        }
    }

    pub fn access_denied(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_ACCESS_DENIED,
            reason: reason.into(),
            owner_busy: false,
        }
    }

    pub fn invalid_handle(handle: u32, owner: u32) -> Self {
        Failure {
            code: codes::ERROR_INVALID_HANDLE,
            reason: format!("handle {handle:#x} is not open in the table of process {owner}"),
            owner_busy: false,
        }
    }

    pub fn too_large(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_NOT_ENOUGH_MEMORY,
            reason: reason.into(),
            owner_busy: false,
        }
    }

    pub fn no_resources(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_NO_SYSTEM_RESOURCES,
            reason: reason.into(),
            owner_busy: false,
        }
    }

    pub fn invalid_block(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_INVALID_PARAMETER,
            reason: reason.into(),
            owner_busy: false,
        }
    }

    /// This failure, marked as an answer to wait on: the owner of the table is busy.
    pub fn owner_busy(self) -> Self {
        Failure {
            owner_busy: true,
            ..self
        }
    }

    pub fn into_reply(self) -> Reply {
        Reply::failed(self.code, self.reason)
    }
}
