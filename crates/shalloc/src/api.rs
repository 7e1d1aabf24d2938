//! The calls: allocate a block into a table, lock it (map it here), free a handle, map a handle
//! into another table.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use shalloc_protocol::wire::{Reply, Request};

use crate::block::{Contents, SealedBlock};
use crate::client;
use crate::error::{Error, Result};
use crate::ids::{Handle, Pid};
use crate::view::View;
use crate::views::{self, Owner};

fn check_pid(pid: Pid) -> Result<()> {
    if pid.is_possible() {
        Ok(())
    } else {
        Err(Error::NoSuchProcess {
            reason: format!("{pid} is not a valid process id"),
        })
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol {
        reason: format!("unexpected reply {reply:?}"),
    }
}

fn handle_from(reply: Reply) -> Result<Handle> {
    match reply {
        Reply::Handle { handle } => Handle::from_raw(handle).ok_or_else(|| Error::Protocol {
            reason: "the broker sent handle 0".into(),
        }),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn alloc_contents(contents: Contents<'_>, to: Pid) -> Result<Handle> {
    check_pid(to)?;
    let size = match &contents {
        Contents::Bytes(data) => data.len() as u64,
        Contents::Zeroed(len) => *len,
    };
    let max = client::broker_info()?.max_block;
    if size > max {
        return Err(Error::TooLarge { size, max });
    }
    let block = SealedBlock::new(contents)?;
    let (reply, _) = client::call(
        &Request::Alloc {
            target: to.as_raw(),
            size: block.size,
        },
        Some(block.fd.as_fd()),
    )?;
    handle_from(reply)
}

/// Copies `data` into a new block and puts a handle to it into the table of process `to`
/// (`SHAllocShared`). The caller's own id is allowed, and common.
///
/// ```no_run
/// let handle = shalloc::alloc(b"hello", shalloc::Pid::current())?;
/// let view = shalloc::lock(handle, shalloc::Pid::current())?;
/// assert_eq!(view.to_vec(), b"hello");
/// # drop(view);
/// # shalloc::free(handle, shalloc::Pid::current())?;
/// # Ok::<(), shalloc::Error>(())
/// ```
pub fn alloc(data: &[u8], to: Pid) -> Result<Handle> {
    alloc_contents(Contents::Bytes(data), to)
}

/// Puts a handle to a new, zero-filled block of `len` bytes into the table of process `to`.
pub fn alloc_zeroed(len: usize, to: Pid) -> Result<Handle> {
    alloc_contents(Contents::Zeroed(len as u64), to)
}

/// Maps the block of `handle` (in `owner`'s table) into this process. Returns the view's address
/// and the block's size.
pub(crate) fn lock_raw(
    handle: Handle,
    owner: Pid,
    write: bool,
    who: Owner,
) -> Result<(NonNull<u8>, u64)> {
    check_pid(owner)?;
    let request = Request::Lock {
        handle: handle.as_raw(),
        owner: owner.as_raw(),
        write,
    };
    match client::call(&request, None)? {
        (Reply::Block { size }, Some(fd)) => Ok((views::map(fd.as_fd(), size, write, who)?, size)),
        (other, _) => Err(unexpected(other)),
    }
}

fn lock_view(handle: Handle, owner: Pid, write: bool) -> Result<View> {
    let (ptr, size) = lock_raw(handle, owner, write, Owner::Rust)?;
    // The mapping succeeded, so the size fits in usize.
    Ok(View::new(ptr, size as usize, write))
}

/// Maps the block of `handle`, a handle in the table of process `owner`, into this process as a
/// read/write [`View`] (`SHLockShared`). Two locks give two views of the same bytes.
pub fn lock(handle: Handle, owner: Pid) -> Result<View> {
    lock_view(handle, owner, true)
}

/// As [`lock`], but the view is read-only: writing through its pointer faults.
pub fn lock_read_only(handle: Handle, owner: Pid) -> Result<View> {
    lock_view(handle, owner, false)
}

/// Closes `handle` in the table of process `owner` (`SHFreeShared`), whichever process allocated
/// it. Views stay valid until they are dropped; the block goes when its last handle and view do.
pub fn free(handle: Handle, owner: Pid) -> Result<()> {
    check_pid(owner)?;
    match client::call(
        &Request::Free {
            handle: handle.as_raw(),
            owner: owner.as_raw(),
        },
        None,
    )? {
        (Reply::Done, _) => Ok(()),
        (other, _) => Err(unexpected(other)),
    }
}

/// Duplicates `handle` from the table of process `from` into the table of process `to`
/// (`SHMapHandle`); the original stays open. Returns the new handle, valid in `to`'s table.
pub fn map_handle(handle: Handle, from: Pid, to: Pid) -> Result<Handle> {
    check_pid(from)?;
    check_pid(to)?;
    let (reply, _) = client::call(
        &Request::Map {
            handle: handle.as_raw(),
            from: from.as_raw(),
            to: to.as_raw(),
        },
        None,
    )?;
    handle_from(reply)
}

/// The pid of the broker serving this process, starting one if none runs.
pub fn broker_pid() -> Result<Pid> {
    Ok(Pid::from_raw(client::broker_info()?.pid))
}
