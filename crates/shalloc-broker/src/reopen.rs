//! Reaching a block that its table's owner holds: the broker opens it again from the owner's
//! descriptor, through `/proc/<pid>/fd/<n>`.
//!
//! The segment says which descriptor; the segment is the owner's to scribble on, so nothing it
//! says is believed. `/proc/<pid>` is opened first and the pidfd checked after, so the directory is
//! the table's process and not a later one with the same pid. The descriptor is opened `O_PATH`,
//! which opens nothing (no device's open routine runs, no FIFO blocks); only a regular file is then
//! opened for real, through our own `/proc/self/fd`, and it must pass every check a block sent by a
//! client passes ([`Block::accept`]). The kernel allows all this only where ptrace's read check
//! passes, which is already the access rule for touching another process's table.
//!
//! That check, on `/proc/<pid>/fd`, compares the target's permitted capabilities with the broker's
//! *effective* ones; a broker running as root keeps `CAP_SYS_PTRACE` out of its effective set (see
//! [`crate::startup`]), so a root target would always fail it. The broker has by then applied the
//! access rule itself (or the table is the caller's own), so it raises the capability for the
//! reopen alone when it holds it permitted.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

use crate::block::Block;
use crate::failure::Failure;
use crate::process::Process;

/// Opens descriptor `fd` of `owner` again as a block of `size` bytes (what the owner's segment
/// says; checked against the memfd like any claimed size), no larger than `max`.
pub(crate) fn reopen(
    owner: &Process,
    fd: u32,
    handle: u32,
    size: u64,
    max: u64,
) -> Result<Block, Failure> {
    let gone = |e: Errno| match e {
        Errno::ACCESS | Errno::PERM => Failure::access_denied(format!(
            "the block of handle {handle:#x} cannot be reached in process {} ({e})",
            owner.pid
        )),
        _ => Failure::invalid_handle(handle, owner.pid),
    };
    let file = open_regular(owner, fd).map_err(gone)?;
    Block::accept(file, size, max).map_err(|_| Failure::invalid_handle(handle, owner.pid))
}

/// Opens descriptor `fd` of `owner` again, read/write, if it is a memfd (`ESRCH` once the owner
/// exited, `EINVAL` for anything else).
pub(crate) fn open_regular(owner: &Process, fd: u32) -> Result<OwnedFd, Errno> {
    let _raised = RaisedPtrace::raise();
    let dir = rustix::fs::open(
        format!("/proc/{}", owner.pid),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if owner.has_exited() {
        return Err(Errno::SRCH);
    }
    // Blocks are memfds: anything else is refused before anything is asked of its file system
    // (a FUSE file its owner serves could stall the broker). Reading the link asks nothing of it.
    let link = rustix::fs::readlinkat(&dir, format!("fd/{fd}"), Vec::new())?;
    if !link.as_bytes().starts_with(b"/memfd:") {
        return Err(Errno::INVAL);
    }
    let path = rustix::fs::openat(
        &dir,
        format!("fd/{fd}"),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&path)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Errno::INVAL);
    }
    rustix::fs::open(
        format!("/proc/self/fd/{}", path.as_raw_fd()),
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// `CAP_SYS_PTRACE` in the effective set for as long as this lives, if it is permitted.
struct RaisedPtrace(Option<rustix::thread::CapabilitySets>);

impl RaisedPtrace {
    fn raise() -> Self {
        let Ok(caps) = rustix::thread::capabilities(None) else {
            return RaisedPtrace(None);
        };
        if caps.effective.contains(CapabilitySet::SYS_PTRACE)
            || !caps.permitted.contains(CapabilitySet::SYS_PTRACE)
        {
            return RaisedPtrace(None);
        }
        let mut more = caps;
        more.effective.insert(CapabilitySet::SYS_PTRACE);
        match rustix::thread::set_capabilities(None, more) {
            Ok(()) => RaisedPtrace(Some(caps)),
            Err(_) => RaisedPtrace(None),
        }
    }
}

impl Drop for RaisedPtrace {
    fn drop(&mut self) {
        if let Some(before) = self.0 {
            // Failing to lower it again would leave the access rule to kcmp alone, which ignores
            // the capability only while it is not effective: better to stop serving.
            if rustix::thread::set_capabilities(None, before).is_err() {
                std::process::abort();
            }
        }
    }
}
