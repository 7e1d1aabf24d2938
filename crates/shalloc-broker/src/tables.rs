//! The handle tables: one per process, each a segment of shared memory (see
//! [`shalloc_protocol::segment`]) that the process itself maps once it attaches.
//!
//! A slot is `Live` when the owner holds the block's descriptor itself (it made the block, or took
//! one the broker sent it) and `Pending` when the broker holds it (another process put it there
//! and the owner has not taken it yet, or never attached). Only `Pending` blocks cost the broker a
//! descriptor; they are what the user's total and the descriptor limit count.
//!
//! A table also has the *channels* other processes send blocks into it by (see
//! [`shalloc_protocol::channel`]): `Reserved` slots name the channel whose sender may fill them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use rustix::fs::{MemfdFlags, SealFlags};
use shalloc_protocol::segment::{self, Segment, State};

use crate::block::Block;
use crate::handles::HandleValues;
use crate::process::Process;

/// The first lease of handle values a process gets for its own allocations; each next one is
/// twice as large, up to [`MAX_LEASE`], so a busy process asks rarely and an idle one wastes few.
const FIRST_LEASE: u32 = 16;
const MAX_LEASE: u32 = 4096;

/// The first lease of values of another process's table (doubling up to [`MAX_CHANNEL_LEASE`],
/// the most one frame can carry).
const FIRST_CHANNEL_LEASE: u32 = 8;
const MAX_CHANNEL_LEASE: u32 = 64;
/// The most values a channel may hold reserved at once: a sender whose blocks its receiver does
/// not take gets no more (and falls back to the broker).
const MAX_CHANNEL_RESERVED: usize = 512;

/// A channel into a table: who sends on it, and the values leased to it.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The sending process.
    pub leaser: u32,
    /// The connection (event token) it was leased through: the channel ends with it.
    pub token: u64,
    /// The broker's sending end, kept to hand out again with each lease.
    pub send: OwnedFd,
    /// The broker's receiving end, to take blocks off before serving a request about them.
    pub recv: OwnedFd,
    /// Values leased on this channel that may still be `Reserved`.
    values: Vec<u32>,
    next_run: u32,
}

/// Frames read off a channel beyond its reserved values in one go (malformed ones, duplicates).
const FRAME_SLACK: usize = 16;

/// A block taken off a channel: (handle, block).
pub(crate) type Taken = (u32, Rc<Block>);

/// One process's table.
#[derive(Debug)]
pub(crate) struct Table {
    pub process: Process,
    pub segment: Segment,
    /// The segment's memfd, sent to the owner when it attaches.
    pub segment_fd: OwnedFd,
    /// The blocks of `Pending` slots, by handle.
    pub pending: HashMap<u32, Rc<Block>>,
    /// The connection (its event token) its owner attached through, if it did.
    pub attached: Option<u64>,
    next_lease: u32,
    /// Channels into this table, by number.
    pub channels: HashMap<u32, Channel>,
    next_channel: u32,
    /// The channel each value was last leased to, for values that may still be `Reserved` or
    /// `Live` (pruned now and then): which sender's block a `Live` slot holds, for
    /// [`Tables::orphans`]. A value handed out otherwise is removed.
    leased_to: HashMap<u32, u32>,
    /// `leased_to`'s size at which it is next pruned.
    prune_at: usize,
}

/// `leased_to`'s first pruning size; after each, the next is twice what is left (at least this).
const PRUNE_FIRST: usize = 256;

impl Table {
    /// Forgets, once `leased_to` has grown enough, the values whose slots hold neither their
    /// reservation nor a live handle (amortised: each pruning at least halves what it looks at).
    fn prune_leased(&mut self) {
        if self.leased_to.len() < self.prune_at {
            return;
        }
        let segment = &self.segment;
        self.leased_to.retain(|&handle, &mut k| {
            segment::slot_of(handle, segment.capacity()).is_some_and(|slot| {
                match segment.state(slot) {
                    State::Live { handle: h, .. } => h == handle,
                    state => state == State::Reserved { handle, channel: k },
                }
            })
        });
        self.prune_at = (2 * self.leased_to.len()).max(PRUNE_FIRST);
    }

    /// The slot and state of `handle`, if the slot holds exactly that handle.
    pub fn find(&self, handle: u32) -> Option<(usize, State)> {
        let slot = segment::slot_of(handle, self.segment.capacity())?;
        let state = self.segment.state(slot);
        (state.handle() == Some(handle)).then_some((slot, state))
    }

    /// Every handle in the table, read with `pread` over the pages the segment has (found with
    /// `SEEK_DATA`/`SEEK_HOLE`), so slots never touched are neither read nor allocated:
    /// (handle, size, frozen, the broker's copy of the block if it holds one). Sizes of blocks
    /// the owner holds are what the owner wrote: for listings only.
    pub fn handles(&self) -> Vec<(u32, u64, bool, Option<&Rc<Block>>)> {
        use rustix::fs::SeekFrom;
        let mut found = Vec::new();
        let end = segment::segment_bytes(self.segment.capacity()) as u64;
        let first_slot = segment::SLOTS_AT as u64;
        let mut at = first_slot;
        let mut chunk = vec![0u8; 64 * 1024];
        while at < end {
            let Ok(data) = rustix::fs::seek(&self.segment_fd, SeekFrom::Data(at)) else {
                break; // ENXIO: no data past `at`
            };
            let hole = rustix::fs::seek(&self.segment_fd, SeekFrom::Hole(data)).unwrap_or(end);
            // Whole slots only: round the start down to a slot boundary.
            let mut pos = data.max(first_slot);
            pos -= (pos - first_slot) % segment::SLOT_BYTES as u64;
            let stop = hole.min(end);
            while pos < stop {
                let want = ((stop - pos) as usize).min(chunk.len());
                let want = want - want % segment::SLOT_BYTES;
                if want == 0 {
                    break;
                }
                let bytes = &mut chunk[..want];
                if rustix::io::pread(&self.segment_fd, &mut *bytes, pos).ok() != Some(want) {
                    return found;
                }
                for raw in bytes.chunks_exact(segment::SLOT_BYTES) {
                    let word = |i: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
                        u64::from_ne_bytes(b)
                    };
                    if let Some(handle) = State::decode(word(0)).handle() {
                        let (size, frozen) = segment::decode_info(word(1));
                        found.push((handle, size, frozen, self.pending.get(&handle)));
                    }
                }
                pos += want as u64;
            }
            at = stop.max(pos);
        }
        found
    }
}

/// Every table of the broker.
#[derive(Debug)]
pub(crate) struct Tables {
    by_pid: HashMap<u32, Table>,
    values: HandleValues,
    capacity: usize,
    pending_total: usize,
    channel_total: usize,
}

/// Why a block could not be put into a table.
#[derive(Debug)]
pub(crate) enum PutError {
    /// Every slot holds a handle.
    Full,
    /// No handle value could be reserved (the mark file cannot be written).
    NoValue,
}

impl Tables {
    /// Tables of `capacity` slots each (the per-table handle limit).
    pub fn new(values: HandleValues, capacity: usize) -> Self {
        Tables {
            by_pid: HashMap::new(),
            values,
            capacity: capacity.clamp(1, segment::MAX_CAPACITY),
            pending_total: 0,
            channel_total: 0,
        }
    }

    /// The number of slots in every table.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The table of `pid`, if one exists and its process has not exited. A table whose process has
    /// exited is dropped here, before anyone can reach it, even if the exit event is still queued.
    pub fn live(&mut self, pid: u32) -> Option<&mut Table> {
        if self
            .by_pid
            .get(&pid)
            .is_some_and(|t| t.process.has_exited())
        {
            self.drop_table(pid);
        }
        self.by_pid.get_mut(&pid)
    }

    /// Adds an empty table for `process`, which must have none.
    pub fn insert(&mut self, process: Process) -> std::io::Result<&mut Table> {
        let pid = process.pid;
        let (segment_fd, segment) = new_segment(self.capacity)?;
        Ok(self.by_pid.entry(pid).or_insert(Table {
            process,
            segment,
            segment_fd,
            pending: HashMap::new(),
            attached: None,
            next_lease: FIRST_LEASE,
            channels: HashMap::new(),
            next_channel: 1,
            leased_to: HashMap::new(),
            prune_at: PRUNE_FIRST,
        }))
    }

    /// Puts `block` into `pid`'s table (which must exist) under a new handle value, as `Pending`.
    pub fn put(&mut self, pid: u32, block: Rc<Block>) -> Result<u32, PutError> {
        let table = self.by_pid.get_mut(&pid).ok_or(PutError::Full)?;
        // Consecutive values take consecutive slots, so `capacity` tries visit every slot once.
        for _ in 0..self.capacity {
            let handle = self.values.take(|_| false).ok_or(PutError::NoValue)?;
            let Some(slot) = segment::slot_of(handle, table.segment.capacity()) else {
                continue;
            };
            table.segment.set_info(slot, block.size, block.frozen);
            if table
                .segment
                .swap(slot, State::Empty, State::Pending { handle })
                .is_ok()
            {
                table.leased_to.remove(&handle);
                table.pending.insert(handle, block);
                self.pending_total += 1;
                return Ok(handle);
            }
        }
        Err(PutError::Full)
    }

    /// Values for `pid`'s own allocations (its table must exist): `(first, count)`.
    pub fn lease(&mut self, pid: u32) -> Option<(u32, u32)> {
        let table = self.by_pid.get_mut(&pid)?;
        let run = self.values.take_run(table.next_lease)?;
        table.next_lease = (table.next_lease * 2).min(MAX_LEASE);
        for handle in shalloc_protocol::wire::lease_values(run.0, u64::MAX).take(run.1 as usize) {
            table.leased_to.remove(&handle);
        }
        Some(run)
    }

    /// The channel into `pid`'s table that `leaser` leases through connection `token`, made if
    /// there is none: its number.
    pub fn channel(&mut self, pid: u32, leaser: u32, token: u64) -> std::io::Result<u32> {
        let table = self
            .by_pid
            .get_mut(&pid)
            .ok_or(std::io::ErrorKind::NotFound)?;
        if let Some((&k, _)) = table
            .channels
            .iter()
            .find(|(_, c)| c.leaser == leaser && c.token == token)
        {
            return Ok(k);
        }
        let mut k = table.next_channel;
        while k == 0 || table.channels.contains_key(&k) || !State::fd_fits(k) {
            k = if State::fd_fits(k + 1) { k + 1 } else { 1 };
        }
        table.next_channel = k + 1;
        let (send, recv) = shalloc_protocol::channel::pair()?;
        self.channel_total += 1;
        table.channels.insert(
            k,
            Channel {
                leaser,
                token,
                send,
                recv,
                values: Vec::new(),
                next_run: FIRST_CHANNEL_LEASE,
            },
        );
        Ok(k)
    }

    /// Reserves a run of values of `pid`'s table for channel `k`: `(start, count, mask)`, `None`
    /// when none could be (the table is full, or the channel holds enough unused values).
    pub fn reserve(&mut self, pid: u32, k: u32) -> Option<(u32, u32, u64)> {
        let table = self.by_pid.get_mut(&pid)?;
        let segment = &table.segment;
        let channel = table.channels.get_mut(&k)?;
        let leased_to = &mut table.leased_to;
        channel.values.retain(|&handle| {
            let slot = segment::slot_of(handle, segment.capacity());
            slot.is_some_and(|s| segment.state(s) == State::Reserved { handle, channel: k })
        });
        if channel.values.len() >= MAX_CHANNEL_RESERVED {
            return None;
        }
        let (start, count) = self.values.take_run(channel.next_run)?;
        channel.next_run = (channel.next_run * 2).min(MAX_CHANNEL_LEASE);
        let mut mask = 0u64;
        for (i, handle) in shalloc_protocol::wire::lease_values(start, u64::MAX)
            .take(count as usize)
            .enumerate()
        {
            let Some(slot) = segment::slot_of(handle, segment.capacity()) else {
                continue;
            };
            let reserved = State::Reserved { handle, channel: k };
            if segment.swap(slot, State::Empty, reserved).is_ok() {
                mask |= 1 << i;
                channel.values.push(handle);
                leased_to.insert(handle, k);
            }
        }
        table.prune_leased();
        (mask != 0).then_some((start, count, mask))
    }

    /// Empties the slots of `values` that are still reserved for channel `k` of `pid`'s table.
    pub fn unreserve(&mut self, pid: u32, k: u32, values: impl IntoIterator<Item = u32>) {
        let Some(table) = self.by_pid.get_mut(&pid) else {
            return;
        };
        for handle in values {
            if let Some(slot) = segment::slot_of(handle, table.segment.capacity()) {
                let reserved = State::Reserved { handle, channel: k };
                let _ = table.segment.swap(slot, reserved, State::Empty);
            }
        }
    }

    /// Takes the blocks waiting on channel `k` of `pid`'s table into the broker's keeping (each
    /// checked, and only into a slot reserved for that channel), at most `room` of them: the blocks
    /// taken, for their owner. It reads at most as many frames as the channel has values reserved
    /// (and a few more), so senders that keep writing garbage cannot hold the broker here.
    pub fn take_deliveries(&mut self, pid: u32, k: u32, max_block: u64, room: usize) -> Vec<Taken> {
        use shalloc_protocol::channel::{self, Taken as Took};
        let mut taken = Vec::new();
        let Some(table) = self.by_pid.get_mut(&pid) else {
            return taken;
        };
        let Some(channel) = table.channels.get(&k) else {
            return taken;
        };
        let mut frames = channel.values.len() + FRAME_SLACK;
        while taken.len() < room && frames > 0 {
            frames -= 1;
            let (delivery, fd) = match channel::take(std::os::fd::AsFd::as_fd(&channel.recv)) {
                Took::Block(delivery, fd) => (delivery, fd),
                Took::Malformed => continue,
                Took::Empty | Took::Finished => break,
            };
            let Ok(block) = Block::accept(fd, delivery.size, max_block) else {
                continue;
            };
            let handle = delivery.handle;
            let Some(slot) = segment::slot_of(handle, table.segment.capacity()) else {
                continue;
            };
            let reserved = State::Reserved { handle, channel: k };
            if table.segment.state(slot) != reserved {
                continue;
            }
            table.segment.set_info(slot, block.size, block.frozen);
            if table
                .segment
                .swap(slot, reserved, State::Pending { handle })
                .is_ok()
            {
                let block = Rc::new(block);
                table.pending.insert(handle, Rc::clone(&block));
                self.pending_total += 1;
                taken.push((handle, block));
            }
        }
        taken
    }

    /// Removes channel `k` from `pid`'s table: the values it may still hold reserved.
    pub fn remove_channel(&mut self, pid: u32, k: u32) -> Vec<u32> {
        let removed = self
            .by_pid
            .get_mut(&pid)
            .and_then(|t| t.channels.remove(&k));
        self.channel_total -= usize::from(removed.is_some());
        removed.map(|c| c.values).unwrap_or_default()
    }

    /// Every (table, channel) pair whose channel was leased through connection `token`.
    pub fn channels_of(&self, token: u64) -> Vec<(u32, u32)> {
        let mut found = Vec::new();
        for (&pid, table) in &self.by_pid {
            for (&k, channel) in &table.channels {
                if channel.token == token {
                    found.push((pid, k));
                }
            }
        }
        found
    }

    /// Every (table, channel) pair.
    pub fn all_channels(&self) -> Vec<(u32, u32)> {
        let mut found = Vec::new();
        for (&pid, table) in &self.by_pid {
            found.extend(table.channels.keys().map(|&k| (pid, k)));
        }
        found
    }

    /// Forgets the broker's copy of `handle`'s block in `pid`'s table, if it has one.
    pub fn forget_pending(&mut self, pid: u32, handle: u32) {
        if let Some(table) = self.by_pid.get_mut(&pid) {
            if table.pending.remove(&handle).is_some() {
                self.pending_total -= 1;
            }
        }
    }

    /// Drops `pid`'s table if nothing can be in it: its owner never attached and the broker holds
    /// no block for it.
    pub fn drop_if_unused(&mut self, pid: u32) {
        if self
            .by_pid
            .get(&pid)
            .is_some_and(|t| t.attached.is_none() && t.pending.is_empty())
        {
            self.by_pid.remove(&pid);
        }
    }

    /// Tells the senders of `pid`'s channels, on the receiving ends the broker keeps, which of
    /// their blocks were still open in its table and clean as it exited: never reopened by the
    /// broker for anyone (not exported), not frozen, and the owner never said it forked. Call
    /// once the process exited, before its table goes. Returns how many.
    fn orphans(&mut self, pid: u32) -> usize {
        let Some(table) = self.by_pid.get_mut(&pid) else {
            return 0;
        };
        if table.segment.forks() != 0 {
            return 0;
        }
        let segment = &table.segment;
        let mut told = 0;
        for (&handle, k) in &table.leased_to {
            let Some(slot) = segment::slot_of(handle, segment.capacity()) else {
                continue;
            };
            let live = matches!(segment.state(slot), State::Live { handle: h, .. } if h == handle);
            if !live || segment.exported(slot) || segment.info(slot).1 {
                continue;
            }
            if let Some(channel) = table.channels.get(k) {
                let end = std::os::fd::AsFd::as_fd(&channel.recv);
                told += usize::from(shalloc_protocol::channel::orphan(end, handle));
            }
        }
        told
    }

    /// Drops `pid`'s table and closes all its handles (its process exited), first telling its
    /// channels' senders which of their blocks were clean: (the blocks the broker held for it, the
    /// senders' blocks found clean).
    pub fn drop_table(&mut self, pid: u32) -> (usize, usize) {
        let orphans = self.orphans(pid);
        let Some(table) = self.by_pid.remove(&pid) else {
            return (0, 0);
        };
        self.pending_total -= table.pending.len();
        self.channel_total -= table.channels.len();
        (table.pending.len(), orphans)
    }

    /// Whether `pid` has a table whose process has exited.
    pub fn exited(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|t| t.process.has_exited())
    }

    /// The number of channels (two descriptors each).
    pub fn channel_count(&self) -> usize {
        self.channel_total
    }

    /// The number of blocks the broker itself holds (one descriptor each).
    pub fn pending_count(&self) -> usize {
        self.pending_total
    }

    /// Every table, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        self.by_pid.values()
    }

    /// The table of `pid`, without the liveness check (for the event loop).
    pub fn get(&self, pid: u32) -> Option<&Table> {
        self.by_pid.get(&pid)
    }

    /// The number of tables.
    pub fn table_count(&self) -> usize {
        self.by_pid.len()
    }
}

/// A fresh segment of `capacity` slots: a memfd sealed against shrinking, growing and re-sealing
/// before anyone else can see it, and the broker's mapping of it.
fn new_segment(capacity: usize) -> std::io::Result<(OwnedFd, Segment)> {
    let fd = rustix::fs::memfd_create(
        "shalloc-table",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, segment::segment_bytes(capacity) as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    let segment = Segment::map(&fd, capacity, false)?;
    segment.write_header();
    Ok((fd, segment))
}
