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
use crate::reopen::reopen;
use crate::state::Broker;
use crate::tables::{PutError, Table};
use shalloc_protocol::segment::State;

/// How long the broker spins for an owner that is taking a block off a channel to put it in its
/// slot (it takes microseconds) before it sets the request aside and serves others meanwhile.
const RECEIVING_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// Channels are made only while the broker has this many descriptors to spare (twice over).
const CHANNEL_FD_MARGIN: usize = 64;

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
            return self
                .tables
                .insert(process)
                .map(Some)
                .map_err(|e| Failure::no_resources(format!("cannot make a table: {e}")));
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
    /// user's total, the broker's descriptors and the table's own limit, and sends it to the
    /// table's owner if it attached (before the reply, so that whoever learns the handle from the
    /// reply can only tell the owner after the block is on its way).
    fn put_into(&mut self, caller: &Process, pid: u32, block: Rc<Block>) -> Answer {
        let total = self.tables.pending_count();
        if total >= self.max_live_handles() {
            return Err(Failure::no_resources(format!(
                "the broker holds {total} blocks, its limit (at most {} handles, {} open files)",
                self.config.limits.max_handles, self.nofile
            )));
        }
        let capacity = self.tables.capacity();
        self.table(caller, pid, true)?
            .ok_or_else(|| Failure::access_denied("no table"))?;
        let handle = self
            .tables
            .put(pid, Rc::clone(&block))
            .map_err(|e| match e {
                PutError::Full => Failure::no_resources(format!(
                    "the table of process {pid} already holds {capacity} handles, its limit"
                )),
                PutError::NoValue => Failure::no_resources("no free handle value"),
            })?;
        self.outbox.push((pid, handle, block));
        plain(Reply::Handle { handle })
    }

    /// The block of `handle` in `owner`'s table: the broker's own copy when it holds one, else
    /// opened again from the owner's descriptor, and believed only if the handle stayed `Live`
    /// throughout (an owner closes a block's descriptor only after its slot left `Live`).
    fn block_of(
        &mut self,
        caller: &Process,
        handle: u32,
        owner: u32,
    ) -> Result<Rc<Block>, Failure> {
        let max = self.config.limits.max_block;
        let invalid = || Failure::invalid_handle(handle, owner);
        self.table(caller, owner, false)?.ok_or_else(invalid)?;
        if self.settle_reserved(owner, handle)? {
            return Err(invalid().owner_busy());
        }
        let table = self.tables.live(owner).ok_or_else(invalid)?;
        let (slot, state) = table.find(handle).ok_or_else(invalid)?;
        if let Some(block) = table.pending.get(&handle) {
            // Leaves through the broker's own copy: marked, so that nobody ever takes it for a
            // block only its owner held (the owner adopts it marked, and if the owner dies, the
            // sender is not told it was clean).
            table.segment.mark_exported(slot);
            return Ok(Rc::clone(block));
        }
        let State::Live { fd, .. } = state else {
            return Err(invalid());
        };
        // Marked before the block can leave the owner, so that the owner never recycles it (it
        // may be mapped elsewhere from now on); a stale mark costs only a recycling.
        table.segment.mark_exported(slot);
        if table.segment.state(slot) != state {
            return Err(invalid());
        }
        let (size, _) = table.segment.info(slot);
        let block = reopen(&table.process, fd, handle, size, max)?;
        if table.segment.state(slot) != state {
            return Err(invalid());
        }
        Ok(Rc::new(block))
    }

    /// `Lock`: send the block's memfd back for the caller to map.
    pub(crate) fn lock(
        &mut self,
        caller: &Process,
        handle: u32,
        owner: u32,
        write: bool,
    ) -> Answer {
        let block = self.block_of(caller, handle, owner)?;
        if write && block.frozen {
            return Err(Failure::access_denied(format!(
                "handle {handle:#x} names a frozen (write-sealed) block: lock it read-only"
            )));
        }
        let size = block.size;
        let fd = match Rc::try_unwrap(block) {
            Ok(reopened) => reopened.fd,
            Err(shared) => shared
                .fd
                .try_clone()
                .map_err(|e| Failure::no_resources(format!("dup: {e}")))?,
        };
        Ok((Reply::Block { size }, Some(fd)))
    }

    /// `Free`: close the handle, by the same compare-and-swap the owner uses, so of two racing
    /// frees exactly one succeeds.
    pub(crate) fn free(&mut self, caller: &Process, handle: u32, owner: u32) -> Answer {
        let invalid = || Failure::invalid_handle(handle, owner);
        self.table(caller, owner, false)?.ok_or_else(invalid)?;
        if self.settle_reserved(owner, handle)? {
            return Err(invalid().owner_busy());
        }
        let table = self.tables.live(owner).ok_or_else(invalid)?;
        // The owner may move the slot from Pending to Live under us (it took the block): look again.
        let mut closed = None;
        for _ in 0..3 {
            let (slot, state) = table.find(handle).ok_or_else(invalid)?;
            if table.segment.swap(slot, state, State::Empty).is_ok() {
                closed = Some(state);
                break;
            }
        }
        match closed.ok_or_else(invalid)? {
            State::Live { .. } => table.segment.count_remote_free(),
            State::Pending { .. } => {}
            _ => return Err(invalid()),
        }
        self.tables.forget_pending(owner, handle);
        self.tables.drop_if_unused(owner);
        plain(Reply::Done)
    }

    /// `Map`: duplicate a handle from one table into another.
    pub(crate) fn map(&mut self, caller: &Process, handle: u32, from: u32, to: u32) -> Answer {
        let block = self.block_of(caller, handle, from)?;
        self.put_into(caller, to, block)
    }

    /// `Attach`: give the caller its own table's segment, and (after the reply) every block the
    /// broker holds for it.
    pub(crate) fn attach(&mut self, caller: &Process, token: u64) -> Answer {
        let capacity = self.tables.capacity();
        let table = self
            .table(caller, caller.pid, true)?
            .ok_or_else(|| Failure::access_denied("no table"))?;
        table.attached = Some(token);
        let fd = table
            .segment_fd
            .try_clone()
            .map_err(|e| Failure::no_resources(format!("dup: {e}")))?;
        let held: Vec<_> = table
            .pending
            .iter()
            .map(|(&handle, block)| (caller.pid, handle, Rc::clone(block)))
            .collect();
        self.outbox.extend(held);
        Ok((
            Reply::Table {
                capacity: capacity as u32,
            },
            Some(fd),
        ))
    }

    /// `Lease`: handle values for the caller's own allocations.
    pub(crate) fn lease(&mut self, caller: &Process) -> Answer {
        self.table(caller, caller.pid, true)?
            .ok_or_else(|| Failure::access_denied("no table"))?;
        let (start, count) = self
            .tables
            .lease(caller.pid)
            .ok_or_else(|| Failure::no_resources("no free handle value"))?;
        plain(Reply::Lease { start, count })
    }

    /// `LeaseInto`: values of `target`'s table for the caller to fill over a channel. Refused
    /// (the caller then allocates through the broker) unless the caller may put blocks into that
    /// table, its owner attached it, and the owner was told of the lease before the caller is.
    pub(crate) fn lease_into(&mut self, caller: &Process, token: u64, target: u32) -> Answer {
        if target == caller.pid {
            return Err(Failure::invalid_block(
                "a process leases values of its own table with Lease",
            ));
        }
        let not_attached = || {
            Failure::no_resources(format!(
                "process {target} has not attached its table: allocate through the broker"
            ))
        };
        // A channel costs two descriptors; leave them for blocks when they run short.
        if self.descriptor_room() < 2 * CHANNEL_FD_MARGIN {
            return Err(Failure::no_resources(
                "the broker is short of descriptors: allocate through it",
            ));
        }
        let table = self
            .table(caller, target, false)?
            .ok_or_else(not_attached)?;
        if table.attached.is_none() {
            return Err(not_attached());
        }
        let k = self
            .tables
            .channel(target, caller.pid, token)
            .map_err(|e| Failure::no_resources(format!("cannot make a channel: {e}")))?;
        let (start, count, mask) = self.tables.reserve(target, k).ok_or_else(|| {
            Failure::no_resources(format!("no handle values of process {target} to lease"))
        })?;
        let leased = Reply::Leased {
            channel: k,
            start,
            count,
            mask,
        };
        // The owner first (the kernel copies the receiving end into the message), then the caller.
        let channel = self.tables.get(target).and_then(|t| t.channels.get(&k));
        let send = channel
            .filter(|c| self.tell_owner(target, &leased, Some(&c.recv)))
            .and_then(|c| c.send.try_clone().ok());
        let Some(send) = send else {
            let values = shalloc_protocol::wire::lease_values(start, mask);
            self.tables.unreserve(target, k, values);
            return Err(not_attached());
        };
        Ok((Reply::Granted { start, count, mask }, Some(send)))
    }

    /// Takes the blocks waiting on the channel whose reserved slot `handle` is, so that a request
    /// about it sees what its sender already sent. Whether the owner still holds a block it took
    /// off a channel and has not put in its slot (after a short spin): then the answer must wait.
    /// A failure when the block may be on the channel but the broker may hold no more blocks.
    fn settle_reserved(&mut self, owner: u32, handle: u32) -> Result<bool, Failure> {
        let Some(table) = self.tables.live(owner) else {
            return Ok(false);
        };
        let Some(slot) = shalloc_protocol::segment::slot_of(handle, table.segment.capacity())
        else {
            return Ok(false);
        };
        let State::Reserved { channel: k, .. } = table.segment.state(slot) else {
            return Ok(false);
        };
        let reserved = State::Reserved { handle, channel: k };
        // Spin only the first time: a request tried again after being set aside looks once, so
        // that an owner stuck with its receiving word set costs the loop nothing per retry.
        let spin = if self.retrying {
            std::time::Duration::ZERO
        } else {
            RECEIVING_SPIN
        };
        let give_up = std::time::Instant::now() + spin;
        loop {
            self.take_deliveries(owner, k);
            let full = self.tables.pending_count() >= self.max_live_handles();
            let Some(table) = self.tables.live(owner) else {
                return Ok(false);
            };
            if table.segment.state(slot) != reserved {
                return Ok(false);
            }
            if full {
                return Err(Failure::no_resources(format!(
                    "handle {handle:#x} may be on its way to process {owner}, and the broker holds                      as many blocks as it may: ask again after some are freed"
                )));
            }
            if !table.segment.receiving() {
                return Ok(false);
            }
            if std::time::Instant::now() > give_up {
                return Ok(true);
            }
            std::thread::yield_now();
        }
    }

    /// Takes the blocks waiting on channel `k` of `owner`'s table, and queues them for the owner:
    /// as many as the broker may hold (each costs it a descriptor, within the user's total); the
    /// rest stay on the channel for the owner.
    pub(crate) fn take_deliveries(&mut self, owner: u32, k: u32) {
        let max = self.config.limits.max_block;
        let room = self
            .max_live_handles()
            .saturating_sub(self.tables.pending_count());
        for (handle, block) in self.tables.take_deliveries(owner, k, max, room) {
            self.outbox.push((owner, handle, block));
        }
    }

    /// Ends channel `k` of `owner`'s table (its sender's connection closed): takes what is left on
    /// it, empties the values it did not use, and tells the owner. Not while the owner may hold a
    /// block it took off a channel and has not put in its slot: then `false`, and the caller tries
    /// again later (the block would be lost with its emptied slot).
    ///
    /// With `give_up` (the owner kept its word set past [`crate::state`]'s limit: it is stopped or
    /// hostile), the channel ends anyway.
    pub(crate) fn end_channel(&mut self, owner: u32, k: u32, give_up: bool) -> bool {
        self.take_deliveries(owner, k);
        let busy = self
            .tables
            .live(owner)
            .is_some_and(|t| t.segment.receiving());
        if busy && !give_up {
            return false;
        }
        let values = self.tables.remove_channel(owner, k);
        self.tables.unreserve(owner, k, values);
        // If the owner does not hear of it, it keeps a closed-off end until its table goes.
        self.tell_owner(owner, &Reply::Unleased { channel: k }, None);
        true
    }

    /// The `Adopted` notice: the owner took `handle`'s block; close the broker's copy once the slot
    /// shows it (a notice alone proves nothing).
    pub(crate) fn adopted(&mut self, caller: &Process, handle: u32) {
        let still_ours = self
            .tables
            .live(caller.pid)
            .and_then(|t| t.find(handle))
            .is_some_and(|(_, state)| state == State::Pending { handle });
        if !still_ours {
            self.tables.forget_pending(caller.pid, handle);
        }
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
        for (owner, k) in self.tables.all_channels() {
            self.take_deliveries(owner, k);
        }
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
