//! One handler per request, as wineserver has: each takes the kernel-verified caller and the
//! request's fields, and answers with a reply (and, for a lock, the descriptor to send).
//!
//! The order of checks is the same everywhere and follows what Windows reports: the process id
//! first (no such process, 87), then access (5), then the handle (6).

use std::os::fd::OwnedFd;
use std::rc::Rc;

use shalloc_protocol::wire::Reply;

use crate::block::Block;
use crate::failure::Failure;
use crate::process::{self, Process};
use crate::state::Broker;
use crate::tables::Table;

/// What a handler produced: a reply, and the descriptor that travels with it, if any.
pub(crate) type Answer = Result<(Reply, Option<OwnedFd>), Failure>;

fn plain(reply: Reply) -> Answer {
    Ok((reply, None))
}

impl Broker {
    /// Resolves the table of `pid` for `caller`: checks the process and the access rule, and
    /// creates the table when `create` is set. `Ok(None)` means the process has no table.
    fn table(
        &mut self,
        caller: &Process,
        pid: u32,
        create: bool,
    ) -> Result<Option<&mut Table>, Failure> {
        let fresh = if pid == caller.pid {
            // The caller's own table. Its connection's pidfd pins it, so it is alive if that is.
            if caller.has_exited() {
                return Err(Failure::access_denied("the calling process has exited"));
            }
            if self.tables.live(pid).is_some() || !create {
                None
            } else {
                // A pidfd of its own, not a dup of the connection's: epoll watches an open file
                // description until every fd to it is closed, so a shared one would keep a
                // dropped table's registration (and its exit events) alive.
                let process = Process::open(pid)?;
                if caller.has_exited() {
                    return Err(Failure::access_denied("the calling process has exited"));
                }
                Some(process)
            }
        } else {
            process::check_caller(caller, self.uid)?;
            let target = Process::open(pid)?;
            process::check_target(&target, self.uid)?;
            if self.tables.live(pid).is_some() || !create {
                None
            } else {
                Some(target)
            }
        };
        if let Some(process) = fresh {
            self.watch_table(&process)?;
            return Ok(Some(self.tables.insert(process)));
        }
        Ok(self.tables.live(pid))
    }

    /// `Alloc`: the caller made and sealed a memfd; put it into `target`'s table.
    pub(crate) fn alloc(
        &mut self,
        caller: &Process,
        target: u32,
        size: u64,
        fd: OwnedFd,
    ) -> Answer {
        let block = Block::accept(fd, size, self.config.limits.max_block)?;
        self.put_into(caller, target, Rc::new(block))
    }

    /// Puts `block` under a new handle into `pid`'s table (creating the table), within the
    /// user's total, the broker's descriptors and the table's own limit.
    fn put_into(&mut self, caller: &Process, pid: u32, block: Rc<Block>) -> Answer {
        let total = self.tables.handle_count();
        if total >= self.max_live_handles() {
            return Err(Failure::no_resources(format!(
                "the broker holds {total} handles, its limit (at most {} handles, {} open files)",
                self.config.limits.max_handles, self.nofile
            )));
        }
        let per_table = self.config.limits.max_handles_per_table;
        let table = self
            .table(caller, pid, true)?
            .ok_or_else(|| Failure::access_denied("no table"))?;
        if table.handles.len() >= per_table {
            return Err(Failure::no_resources(format!(
                "the table of process {pid} already holds {per_table} handles, its limit"
            )));
        }
        let handle = self
            .tables
            .put(pid, block)
            .ok_or_else(|| Failure::no_resources("no free handle value"))?;
        plain(Reply::Handle { handle })
    }

    /// `Lock`: send the block's memfd back for the caller to map.
    pub(crate) fn lock(
        &mut self,
        caller: &Process,
        handle: u32,
        owner: u32,
        write: bool,
    ) -> Answer {
        let table = self.table(caller, owner, false)?;
        let block = table
            .and_then(|t| t.handles.get(&handle))
            .ok_or_else(|| Failure::invalid_handle(handle, owner))?;
        if write && block.frozen {
            return Err(Failure::access_denied(format!(
                "handle {handle:#x} names a frozen (write-sealed) block: lock it read-only"
            )));
        }
        let fd = block
            .fd
            .try_clone()
            .map_err(|e| Failure::no_resources(format!("dup: {e}")))?;
        Ok((Reply::Block { size: block.size }, Some(fd)))
    }

    /// `Free`: close the handle.
    pub(crate) fn free(&mut self, caller: &Process, handle: u32, owner: u32) -> Answer {
        let known = self
            .table(caller, owner, false)?
            .is_some_and(|t| t.handles.contains_key(&handle));
        if !known {
            return Err(Failure::invalid_handle(handle, owner));
        }
        self.tables.remove(owner, handle);
        plain(Reply::Done)
    }

    /// `Map`: duplicate a handle from one table into another.
    pub(crate) fn map(&mut self, caller: &Process, handle: u32, from: u32, to: u32) -> Answer {
        let block = self
            .table(caller, from, false)?
            .and_then(|t| t.handles.get(&handle))
            .cloned()
            .ok_or_else(|| Failure::invalid_handle(handle, from))?;
        self.put_into(caller, to, block)
    }
}

impl Broker {
    /// `Stop`: a process of the broker's user asks it to exit cleanly.
    pub(crate) fn stop(&mut self, caller: &Process) -> Answer {
        process::check_caller(caller, self.uid)?;
        self.stopping = true;
        plain(Reply::Done)
    }

    /// `List`: describe the broker and its tables, in a sealed memfd.
    pub(crate) fn list(&mut self, caller: &Process, verbose: bool) -> Answer {
        process::check_caller(caller, self.uid)?;
        let text = crate::listing::describe(self, verbose).encode();
        let fd = crate::listing::sealed_memfd(text.as_bytes())
            .map_err(|e| Failure::no_resources(format!("cannot make the listing: {e}")))?;
        Ok((
            Reply::Listing {
                size: text.len() as u64,
            },
            Some(fd),
        ))
    }
}
