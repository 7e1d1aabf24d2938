//! The one thing the shalloc client and the shalloc broker share: how they find each other and
//! what they say.
//!
//! - [`rendezvous`]: where the broker's socket lives (a private per-user directory, one socket per
//!   PID namespace) and the checks a directory must pass before anyone trusts it.
//! - [`wire`]: the messages, each a small fixed-layout frame with a request id, encoded and decoded
//!   by hand so that a hostile peer can only ever produce a [`wire::DecodeError`].
//! - [`transport`]: sending and receiving one frame with at most one file descriptor over a
//!   `SOCK_SEQPACKET` Unix socket (`SCM_RIGHTS`, `MSG_CMSG_CLOEXEC` on every receive, `MSG_NOSIGNAL`
//!   on every send).
//! - [`segment`]: a process's handle table in shared memory, which the process and the broker
//!   change by compare-and-swap, so a process's calls on its own table need no round trip.
//! - [`channel`]: how a process sends blocks into another process's table itself, over a socket
//!   pair the broker set up, with handle values the broker leased it.
//! - [`block`]: what a descriptor must be before anyone takes it as a block.
//! - [`codes`]: the Win32 error codes both sides speak in.
//! - [`listing`]: the broker's description of itself and its tables, for `shalloc ls`.
//!
//! The block's bytes never cross the socket: only these frames and memfd descriptors do.

pub mod block;
pub mod channel;
pub mod codes;
pub mod listing;
pub mod rendezvous;
pub mod segment;
pub mod transport;
pub mod wire;
