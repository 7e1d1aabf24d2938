//! The calls: allocate a block into a table, lock it (map it here), free a handle, map a handle
//! into another table.

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use shalloc_protocol::wire::{Reply, Request};

use crate::block::{self, Block, Contents};
use crate::client::{self, Connection, Failed, table::Lookup};
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

/// `handle` is not open in `owner`'s table: the same words the broker uses.
fn not_open(handle: Handle, owner: Pid) -> Error {
    Error::InvalidHandle {
        reason: format!(
            "handle {:#x} is not open in the table of process {owner}",
            handle.as_raw()
        ),
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

pub(crate) fn alloc_contents(contents: Contents<'_>, to: Pid, frozen: bool) -> Result<Handle> {
    alloc_contents_if(contents, to, frozen, || true)?.ok_or_else(|| Error::Protocol {
        reason: "a block was abandoned".into(),
    })
}

/// Makes the block, then gives it a handle in `to`'s table only if `keep()` says so after the
/// contents are written (the C fill function may abandon it): `Ok(None)` when abandoned.
pub(crate) fn alloc_contents_if(
    contents: Contents<'_>,
    to: Pid,
    frozen: bool,
    keep: impl FnOnce() -> bool,
) -> Result<Option<Handle>> {
    check_pid(to)?;
    let size = contents.len();
    let max = client::max_block()?;
    if size > max {
        return Err(Error::TooLarge { size, max });
    }
    let own = to == Pid::current();
    let target = if own { 0 } else { to.as_raw() };
    let (block, warm) = block::make(contents, frozen, target)?;
    let block = Arc::new(block);
    if !keep() {
        return Ok(None);
    }
    if own {
        // Our own table: no round trip (but for a new lease of handle values, now and then).
        return client::with_table(|conn, table, deadline| {
            let handle = table.insert(conn, &block, deadline)?;
            if !warm {
                // The pool had none: blocks of processes we lent to that exited may be free now.
                conn.reap_leases();
            }
            Ok(handle)
        })
        .map(Some);
    }
    client::with_table(|conn, _, deadline| send_into(conn, &block, to, deadline)).map(Some)
}

/// Puts `block`, held here, into the table of process `to` (not ours): straight to its owner over
/// a leased channel when we can (lent: it may come back), else through the broker, which gives
/// the same answers, failures included (gone for good: never recycled).
fn send_into(
    conn: &mut Connection,
    block: &Arc<Block>,
    to: Pid,
    deadline: Instant,
) -> Result<Handle, Failed> {
    if let Some(handle) = conn.send_leased(to.as_raw(), block, deadline)? {
        return Ok(handle_from(Reply::Handle { handle })?);
    }
    block.mark_exported();
    let alloc = Request::Alloc {
        target: to.as_raw(),
        size: block.size(),
    };
    let (reply, _) = client::call_on(conn, &alloc, Some(block.fd()), deadline)?;
    Ok(handle_from(reply)?)
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
    alloc_contents(Contents::Bytes(data), to, false)
}

/// Puts a handle to a new, zero-filled block of `len` bytes into the table of process `to`.
pub fn alloc_zeroed(len: usize, to: Pid) -> Result<Handle> {
    alloc_contents(Contents::Zeroed(len as u64), to, false)
}

/// Copies `data` into a new **frozen** block: sealed against writing (`F_SEAL_WRITE`) before any
/// other process can receive it, so nobody — the allocator included — can ever change it. It can
/// only be locked read-only, and its views hand out `&[u8]` in safe code
/// ([`View::frozen_bytes`]).
pub fn alloc_frozen(data: &[u8], to: Pid) -> Result<Handle> {
    alloc_contents(Contents::Bytes(data), to, true)
}

/// Makes a block of `len` bytes and lets `fill` write it in place — serialize into it, read a file
/// into it — with no intermediate buffer. The pages are reserved first, so a shortage of memory is
/// an error here, not a `SIGBUS` inside `fill`; the bytes start zeroed. Nobody else can see the
/// block until `fill` has returned and the handle exists. A panic in `fill` leaves no handle and no
/// descriptor behind.
///
/// ```no_run
/// let me = shalloc::Pid::current();
/// let handle = shalloc::alloc_with(4096, me, |buf| buf[..5].copy_from_slice(b"ready"))?;
/// # Ok::<(), shalloc::Error>(())
/// ```
pub fn alloc_with(len: usize, to: Pid, fill: impl FnOnce(&mut [u8])) -> Result<Handle> {
    alloc_contents(Contents::Filled(len as u64, Box::new(fill)), to, false)
}

/// As [`alloc_with`], then frozen once `fill` returns (unmapped, then sealed against writing).
pub fn alloc_frozen_with(len: usize, to: Pid, fill: impl FnOnce(&mut [u8])) -> Result<Handle> {
    alloc_contents(Contents::Filled(len as u64, Box::new(fill)), to, true)
}

/// A view's address, its block's size, and whether the block is frozen (from the descriptor's own
/// seals, never from anything the broker said).
pub(crate) struct Mapped {
    pub ptr: NonNull<u8>,
    pub size: u64,
    pub frozen: bool,
}

/// Maps `fd`, the block of `handle`, as a view: read-only unless `write` (refused for a frozen
/// block). The view keeps `held`, the block as this process holds it, when there is one.
fn map_block(
    handle: Handle,
    fd: std::os::fd::BorrowedFd<'_>,
    size: u64,
    frozen: bool,
    (write, who): (bool, Owner),
    held: Option<Arc<Block>>,
) -> Result<Mapped> {
    if write && frozen {
        return Err(Error::AccessDenied {
            reason: format!("handle {handle} names a frozen block"),
        });
    }
    let ptr = views::map(fd, size, write, frozen, who, held)?;
    Ok(Mapped { ptr, size, frozen })
}

/// Maps the block in a `Block` reply; whether it is frozen comes from the descriptor's own seals.
fn map_reply(
    handle: Handle,
    answer: (Reply, Option<std::os::fd::OwnedFd>),
    write: bool,
    who: Owner,
) -> Result<Mapped> {
    match answer {
        (Reply::Block { size }, Some(fd)) => {
            let seals =
                rustix::fs::fcntl_get_seals(&fd).map_err(|e| Error::os("F_GET_SEALS", e))?;
            let frozen = seals.contains(rustix::fs::SealFlags::WRITE);
            map_block(handle, fd.as_fd(), size, frozen, (write, who), None)
        }
        (other, _) => Err(unexpected(other)),
    }
}

/// Maps the block of `handle` (in `owner`'s table) into this process.
pub(crate) fn lock_raw(handle: Handle, owner: Pid, write: bool, who: Owner) -> Result<Mapped> {
    check_pid(owner)?;
    let request = Request::Lock {
        handle: handle.as_raw(),
        owner: owner.as_raw(),
        write,
    };
    if owner == Pid::current() {
        return client::with_table(
            |conn, table, deadline| match table.lookup(handle.as_raw()) {
                Lookup::Held(block) => Ok(map_block(
                    handle,
                    block.fd(),
                    block.size(),
                    block.frozen(),
                    (write, who),
                    Some(Arc::clone(&block)),
                )?),
                Lookup::AtBroker => {
                    let answer = client::call_on(conn, &request, None, deadline)?;
                    Ok(map_reply(handle, answer, write, who)?)
                }
                Lookup::Closed => Err(not_open(handle, owner).into()),
            },
        );
    }
    map_reply(handle, client::call(&request, None)?, write, who)
}

fn lock_view(handle: Handle, owner: Pid, write: bool) -> Result<View> {
    let mapped = lock_raw(handle, owner, write, Owner::Rust)?;
    // The mapping succeeded, so the size fits in usize.
    Ok(View::new(
        mapped.ptr,
        mapped.size as usize,
        write,
        mapped.frozen,
    ))
}

/// Maps the block of `handle`, a handle in the table of process `owner`, into this process as a
/// read/write [`View`] (`SHLockShared`). Two locks give two views of the same bytes. A frozen
/// block cannot be locked writable ([`Error::AccessDenied`]).
pub fn lock(handle: Handle, owner: Pid) -> Result<View> {
    lock_view(handle, owner, true)
}

/// As [`lock`], but the view is read-only: writing through its pointer faults. The only way to
/// lock a frozen block.
pub fn lock_read_only(handle: Handle, owner: Pid) -> Result<View> {
    lock_view(handle, owner, false)
}

/// Closes `handle` in the table of process `owner` (`SHFreeShared`), whichever process allocated
/// it. Views stay valid until they are dropped; the block goes when its last handle and view do.
pub fn free(handle: Handle, owner: Pid) -> Result<()> {
    check_pid(owner)?;
    let request = Request::Free {
        handle: handle.as_raw(),
        owner: owner.as_raw(),
    };
    let answer = if owner == Pid::current() {
        client::with_table(|conn, table, deadline| match table.free(handle.as_raw()) {
            Some(true) => Ok(None),
            Some(false) => Err(not_open(handle, owner).into()),
            None => Ok(Some(client::call_on(conn, &request, None, deadline)?)),
        })?
    } else {
        Some(client::call(&request, None)?)
    };
    match answer {
        None | Some((Reply::Done, _)) => Ok(()),
        Some((other, _)) => Err(unexpected(other)),
    }
}

/// Duplicates `handle` from the table of process `from` into the table of process `to`
/// (`SHMapHandle`); the original stays open. Returns the new handle, valid in `to`'s table.
pub fn map_handle(handle: Handle, from: Pid, to: Pid) -> Result<Handle> {
    check_pid(from)?;
    check_pid(to)?;
    let request = Request::Map {
        handle: handle.as_raw(),
        from: from.as_raw(),
        to: to.as_raw(),
    };
    if from != Pid::current() {
        let (reply, _) = client::call(&request, None)?;
        return handle_from(reply);
    }
    // From our own table: we hold the block, so it goes straight into the other table (into ours,
    // without a round trip).
    client::with_table(|conn, table, deadline| {
        let block = match table.lookup(handle.as_raw()) {
            Lookup::Held(block) => block,
            Lookup::AtBroker => {
                let (reply, _) = client::call_on(conn, &request, None, deadline)?;
                return Ok(handle_from(reply)?);
            }
            Lookup::Closed => return Err(not_open(handle, from).into()),
        };
        if to == from {
            // A second handle to the same block, held once.
            return table.insert(conn, &block, deadline);
        }
        // A block another process put into our table leaves us for another table: marked first,
        // so that nobody ever takes it for a block only we held.
        if !block.is_made_here() {
            table.mark_exported(&block);
        }
        send_into(conn, &block, to, deadline)
    })
}

/// The pid of the broker serving this process, starting one if none runs.
pub fn broker_pid() -> Result<Pid> {
    Ok(Pid::from_raw(client::broker_info()?.pid))
}
