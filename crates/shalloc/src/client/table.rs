//! This process's own handle table: the segment it shares with the broker, and the descriptors of
//! the blocks in it, which this process holds itself.
//!
//! Calls on the own table — alloc into it, lock, free — change the segment by compare-and-swap and
//! touch only descriptors held here: no round trip to the broker. Another process's call on this
//! table goes to the broker, which swaps the same words (see [`shalloc_protocol::segment`]), so of
//! two racing frees exactly one wins, and a lock that starts after a free returned fails.
//!
//! A handle is `Live` in the segment only once its descriptor is open here, so the broker can serve
//! it to others as soon as anyone can learn its value.
//!
//! Another process may send blocks straight into this table, over a channel with values the broker
//! leased it (see [`shalloc_protocol::channel`]). They are taken off the channel when a call here
//! meets one of those `Reserved` values, checked as the broker checks any block, and made `Live`;
//! the segment's *receiving* word is set meanwhile, so the broker, which may take them too, knows to
//! wait for the slot instead of calling the handle closed. Its descriptor is closed only after its slot
//! has left `Live` (here, or by the broker: then the next call here notices, by the segment's count
//! of the broker's frees, and closes it).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use shalloc_protocol::channel::{self, Taken};
use shalloc_protocol::segment::{self, Segment, State};
use shalloc_protocol::wire::{Delivery, Reply, Request};

use super::Failed;
use super::connection::{CallError, Connection, Unasked};
use crate::block::{self, Block};
use crate::error::{Error, Result};
use crate::ids::Handle;

/// The most frames one look at a channel reads.
const MAX_FRAMES_PER_RECEIVE: usize = 1024;

/// A block this process holds for a handle of its own table.
#[derive(Debug)]
struct Held {
    block: Arc<Block>,
    slot: usize,
}

impl Held {
    fn state(&self, handle: u32) -> State {
        State::Live {
            handle,
            fd: self.block.fd().as_raw_fd() as u32,
        }
    }
}

/// What the own table knows of a handle.
pub(crate) enum Lookup {
    /// Open, with its block held here.
    Held(Arc<Block>),
    /// Open, but the broker still holds its block: ask the broker.
    AtBroker,
    /// Not open in this table.
    Closed,
}

/// A block taken off a channel into its slot: the delivery, its descriptor, (whether it is frozen,
/// its memfd's (device, inode)), and the slot.
type Placed = (Delivery, OwnedFd, (bool, (u64, u64)), usize);

/// The own table.
#[derive(Debug)]
pub(crate) struct OwnTable {
    segment: Arc<Segment>,
    /// The segment memfd's (device, inode): a broker that kept our table gives the same one back
    /// on a new connection; a new broker gives another, and the old table is gone with the old one.
    identity: (u64, u64),
    /// Handle values leased to us for our own allocations: (next, how many left).
    lease: (u32, u32),
    held: HashMap<u32, Held>,
    remote_frees_seen: u64,
    /// The receiving ends of the channels into this table, by number (shared with the blocks
    /// that came over them, which are given back over them).
    channels: HashMap<u32, Arc<OwnedFd>>,
    /// The largest block the broker accepts: a block sent over a channel may be no larger.
    max_block: u64,
}

fn identity(fd: &OwnedFd) -> Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", e))?;
    Ok((stat.st_dev, stat.st_ino))
}

fn protocol(why: impl Into<String>) -> Error {
    Error::Protocol { reason: why.into() }
}

impl OwnTable {
    /// Asks the broker for our table on `conn` and returns it: `current` itself when the broker
    /// kept it (the same segment), a fresh one otherwise (and `current`, of a broker that is gone,
    /// is dropped with every descriptor it held).
    pub fn attach(
        conn: &mut Connection,
        current: Option<OwnTable>,
        deadline: Instant,
    ) -> std::result::Result<OwnTable, CallError> {
        let (reply, fd) = conn.call(&Request::Attach, None, deadline)?;
        let (Reply::Table { capacity }, Some(fd)) = (reply, fd) else {
            return Err(CallError::Protocol("unexpected answer to Attach".into()));
        };
        conn.attached = true;
        let id = identity(&fd).map_err(|e| CallError::Protocol(e.to_string()))?;
        if let Some(table) = current {
            if table.identity == id {
                return Ok(table);
            }
            // The old broker's table: its channels are gone, and what we kept of their blocks.
            for channel in table.channels.values() {
                block::received::forget_channel(channel);
            }
        }
        let segment = Segment::map(&fd, capacity as usize, true)
            .map_err(|e| CallError::Protocol(format!("cannot map our table: {e}")))?;
        let segment = Arc::new(segment);
        // The pool shows its warm blocks to the broker there (see `pool::show`).
        block::pool::attach_segment(Arc::clone(&segment));
        Ok(OwnTable {
            segment,
            identity: id,
            lease: (0, 0),
            held: HashMap::new(),
            remote_frees_seen: 0,
            channels: HashMap::new(),
            max_block: conn.max_block,
        })
    }

    /// Takes what the broker sent: blocks into our keeping (telling it so), and channels opened or
    /// finished.
    pub fn adopt(&mut self, conn: &mut Connection) {
        for message in std::mem::take(&mut conn.unasked) {
            let (handle, size, fd) = match message {
                Unasked::Adopt(handle, size, fd) => (handle, size, fd),
                Unasked::Leased(k, fd) => {
                    self.channels.entry(k).or_insert_with(|| Arc::new(fd));
                    continue;
                }
                Unasked::Unleased(k) => {
                    self.close_channel(k);
                    continue;
                }
            };
            let raw = fd.as_raw_fd() as u32;
            let Some(slot) = segment::slot_of(handle, self.segment.capacity()) else {
                continue;
            };
            if !State::fd_fits(raw) {
                continue; // the broker keeps it; a lock asks for it
            }
            let frozen = rustix::fs::fcntl_get_seals(&fd)
                .is_ok_and(|s| s.contains(rustix::fs::SealFlags::WRITE));
            let live = State::Live { handle, fd: raw };
            if self
                .segment
                .swap(slot, State::Pending { handle }, live)
                .is_ok()
            {
                self.keep(handle, block::foreign(fd, size, frozen), slot);
                // Lets the broker close its copy; if this is lost, it only keeps it longer.
                let _ = conn.notify(&Request::Adopted { handle });
            }
        }
    }

    /// Forgets channel `k`, and what we kept of the blocks that came over it.
    fn close_channel(&mut self, k: u32) {
        if let Some(channel) = self.channels.remove(&k) {
            block::received::forget_channel(&channel);
        }
    }

    /// Records a block whose slot was just made `Live` with its descriptor.
    fn keep(&mut self, handle: u32, block: Arc<Block>, slot: usize) {
        self.held.insert(handle, Held { block, slot });
    }

    /// Lets go of a block whose slot left `Live`: if the broker reopened it for another process
    /// meanwhile (the slot's exported mark), it is never recycled.
    fn release(segment: &Segment, held: Held) {
        if segment.take_exported(held.slot) {
            held.block.mark_exported();
        }
    }

    /// Closes the descriptors of handles the broker freed since we last looked.
    fn sweep(&mut self) {
        let frees = self.segment.remote_frees();
        if frees == self.remote_frees_seen {
            return;
        }
        self.remote_frees_seen = frees;
        let segment = &self.segment;
        let gone: Vec<u32> = self
            .held
            .iter()
            .filter(|&(&handle, held)| segment.state(held.slot) != held.state(handle))
            .map(|(&handle, _)| handle)
            .collect();
        for handle in gone {
            if let Some(held) = self.held.remove(&handle) {
                Self::release(segment, held);
            }
        }
    }

    /// Puts `block` into our table under a new handle (on failure, the caller's reference is
    /// all there is).
    pub fn insert(
        &mut self,
        conn: &mut Connection,
        block: &Arc<Block>,
        deadline: Instant,
    ) -> Result<Handle, Failed> {
        self.sweep();
        let capacity = self.segment.capacity();
        let full = || Error::TooManyHandles {
            reason: format!(
                "the table of process {} already holds {capacity} handles, its limit",
                crate::own_pid::get()
            ),
        };
        if self.held.len() >= capacity {
            return Err(full().into());
        }
        let raw = block.fd().as_raw_fd() as u32;
        let (size, frozen) = (block.size(), block.frozen());
        if !State::fd_fits(raw) {
            return Err(Error::TooManyHandles {
                reason: format!("descriptor {raw} is too large for a table entry"),
            }
            .into());
        }
        // Consecutive values take consecutive slots, so `capacity` tries visit every slot once.
        for _ in 0..capacity {
            let handle = self.next_value(conn, deadline)?;
            let Some(slot) = segment::slot_of(handle, capacity) else {
                continue;
            };
            self.segment.set_info(slot, size, frozen);
            if self
                .segment
                .swap(slot, State::Empty, State::Live { handle, fd: raw })
                .is_ok()
            {
                self.keep(handle, Arc::clone(block), slot);
                return Ok(Handle::from_raw(handle).ok_or_else(|| protocol("handle value 0"))?);
            }
        }
        Err(full().into())
    }

    fn next_value(&mut self, conn: &mut Connection, deadline: Instant) -> Result<u32, Failed> {
        if self.lease.1 == 0 {
            match super::call_on(conn, &Request::Lease, None, deadline)? {
                (Reply::Lease { start, count }, _) if count > 0 => self.lease = (start, count),
                (other, _) => return Err(protocol(format!("unexpected answer {other:?}")).into()),
            }
        }
        let value = self.lease.0;
        self.lease = (value.wrapping_add(segment::HANDLE_STEP), self.lease.1 - 1);
        Ok(value)
    }

    /// Takes the blocks waiting on channel `k` into our table, up to and including `wanted`'s (the
    /// rest wait for a call that needs them, or for the broker).
    fn receive(&mut self, k: u32, wanted: u32) {
        let Some(channel) = self.channels.get(&k).cloned() else {
            return;
        };
        let mut taken = Vec::new();
        let mut finished = false;
        // Set before the first block leaves the channel, cleared after the last is in its slot.
        self.segment.set_receiving(true);
        // Bounded, so that senders that keep writing cannot hold us here (a lease run is at most
        // 64 values; what is left waits for the next call).
        for _ in 0..MAX_FRAMES_PER_RECEIVE {
            match channel::take(channel.as_fd()) {
                Taken::Block(delivery, fd) => {
                    let found = delivery.handle == wanted;
                    if let Some(block) = self.place(k, delivery, fd) {
                        taken.push(block);
                    }
                    if found {
                        break;
                    }
                }
                Taken::Malformed => continue,
                Taken::Empty => break,
                Taken::Finished => {
                    finished = true;
                    break;
                }
            }
        }
        self.segment.set_receiving(false);
        if finished {
            self.close_channel(k);
        }
        for (delivery, fd, (frozen, id), slot) in taken {
            let Delivery { handle, tag, size } = delivery;
            let channel = Arc::clone(&channel);
            let lent = Block::lent(fd, (size, frozen), channel, (handle, tag), id);
            self.keep(handle, Arc::new(lent), slot);
        }
    }

    /// Checks a block that came over channel `k` and makes its slot `Live` if the slot is reserved
    /// for that channel: what to keep, or `None` (the descriptor is closed).
    fn place(&self, k: u32, delivery: Delivery, fd: OwnedFd) -> Option<Placed> {
        let Delivery { handle, size, .. } = delivery;
        let (frozen, id) =
            shalloc_protocol::block::check_and_identify(&fd, size, self.max_block).ok()?;
        let slot = segment::slot_of(handle, self.segment.capacity())?;
        let raw = fd.as_raw_fd() as u32;
        let reserved = State::Reserved { handle, channel: k };
        if !State::fd_fits(raw) || self.segment.state(slot) != reserved {
            return None;
        }
        self.segment.set_info(slot, size, frozen);
        let live = State::Live { handle, fd: raw };
        self.segment.swap(slot, reserved, live).ok()?;
        Some((delivery, fd, (frozen, id), slot))
    }

    /// What our table holds under `handle`.
    pub fn lookup(&mut self, handle: u32) -> Lookup {
        self.sweep();
        let capacity = self.segment.capacity();
        let Some(slot) = segment::slot_of(handle, capacity) else {
            return Lookup::Closed;
        };
        let mut state = self.segment.state(slot);
        if let State::Reserved { handle: h, channel } = state {
            if h == handle && self.channels.contains_key(&channel) {
                self.receive(channel, handle);
                state = self.segment.state(slot);
            }
        }
        let matches = self
            .held
            .get(&handle)
            .map(|held| state == held.state(handle));
        match matches {
            Some(true) => {
                if let Some(held) = self.held.get(&handle) {
                    return Lookup::Held(Arc::clone(&held.block));
                }
            }
            Some(false) => {
                // The broker freed it: our reference goes.
                if let Some(held) = self.held.remove(&handle) {
                    Self::release(&self.segment, held);
                }
                return Lookup::Closed;
            }
            None => {}
        }
        let reserved = matches!(state, State::Reserved { handle: h, .. } if h == handle);
        if state == (State::Pending { handle }) || reserved {
            // A reserved value we could not settle here (its channel is unknown to us, or the
            // broker took the block first): the broker takes what was sent, then answers.
            Lookup::AtBroker
        } else {
            Lookup::Closed
        }
    }

    /// Frees `handle` if we hold its block: `Some(true)` freed, `Some(false)` not open here,
    /// `None` when the broker holds the block (ask it).
    pub fn free(&mut self, handle: u32) -> Option<bool> {
        match self.lookup(handle) {
            Lookup::Held(..) => {}
            Lookup::AtBroker => return None,
            Lookup::Closed => return Some(false),
        }
        let held = self.held.remove(&handle)?;
        let won = self
            .segment
            .swap(held.slot, held.state(handle), State::Empty)
            .is_ok();
        // Either way our reference goes: we emptied the slot, or the broker did first.
        Self::release(&self.segment, held);
        Some(won)
    }

    /// Marks every slot that holds `block` exported, before the block leaves this process for
    /// another table: if we die holding it, the broker must not tell its sender it is clean (see
    /// the broker's orphans), and we never give it back.
    pub fn mark_exported(&self, block: &Arc<Block>) {
        for held in self.held.values() {
            if Arc::ptr_eq(&held.block, block) {
                self.segment.mark_exported(held.slot);
            }
        }
        block.mark_exported();
    }

    /// Records that this process is forking: the child may hold every block of this table, so
    /// when we exit, the broker must not tell their senders they are clean.
    pub fn note_fork(&self) {
        self.segment.note_fork();
    }

    /// Forgets the table in a forked child: closes the descriptors it inherited (they are the
    /// parent's table, not the child's) without touching the segment, which the child does not
    /// have (it is mapped `MADV_DONTFORK`).
    pub fn abandon_in_child(self) {
        let OwnTable { segment, held, .. } = self;
        std::mem::forget(segment);
        drop(held);
    }
}
