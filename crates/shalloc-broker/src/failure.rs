//! A failed request: the Win32 code the client will report and the reason in words.

use shalloc_protocol::codes;
use shalloc_protocol::wire::Reply;

/// Why the broker refused a request. It becomes a [`Reply::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: u32,
    pub reason: String,
}

impl Failure {
    pub fn no_such_process(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_INVALID_PARAMETER,
            reason: reason.into(),
        }
    }

    pub fn access_denied(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_ACCESS_DENIED,
            reason: reason.into(),
        }
    }

    pub fn invalid_handle(handle: u32, owner: u32) -> Self {
        Failure {
            code: codes::ERROR_INVALID_HANDLE,
            reason: format!("handle {handle:#x} is not open in the table of process {owner}"),
        }
    }

    pub fn too_large(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_NOT_ENOUGH_MEMORY,
            reason: reason.into(),
        }
    }

    pub fn no_resources(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_NO_SYSTEM_RESOURCES,
            reason: reason.into(),
        }
    }

    pub fn invalid_block(reason: impl Into<String>) -> Self {
        Failure {
            code: codes::ERROR_INVALID_PARAMETER,
            reason: reason.into(),
        }
    }

    pub fn into_reply(self) -> Reply {
        Reply::failed(self.code, self.reason)
    }
}
