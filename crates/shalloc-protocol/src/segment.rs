//! A process's handle table in shared memory: the layout the broker and the table's owner both
//! map, and the one-word states they change only by compare-and-swap.
//!
//! The broker makes one segment per table (a sealed memfd: no side can resize it, so no side can be
//! made to `SIGBUS`) and gives it to the table's process when it attaches. From then on the owner's
//! own calls on its own table — alloc into it, lock, unlock, free — touch only the segment and
//! descriptors the owner already holds, with no round trip; a call from another process goes to the
//! broker, which changes the same words the same way. Of two racing frees of one handle, exactly one
//! swaps the word away from `Live`, so exactly one succeeds.
//!
//! ```text
//! offset 0:   header  capacity u64 | remote frees u64 | owner receiving u64 | owner forks u64
//!                     | 32 bytes (0)
//! offset 64:  pool entry j (32 of them, 16 bytes each): state u64 | deadline u64
//! offset 576: slot i (16 bytes each): state u64 | info u64
//! state:      handle u32 (high half) | descriptor or channel u30 | status u2   (0 = empty)
//! info:       frozen (bit 63) | exported (bit 62) | block size (62 bits)
//! ```
//!
//! A pool entry shows the broker a warm block the owner keeps unused in its pool (see [`Pooled`]):
//! past its deadline the broker punches its pages out, so an owner that makes no more calls still
//! gives its pages back; the owner and the broker change the state word only by swap, so the
//! owner never takes a block the broker is emptying. A scribbled entry can only make the broker
//! punch holes in a sealed memfd of the owner's, which the owner could do itself.
//!
//! The info word gives a block's size (for listings, and for the broker's reopening of it, which
//! checks it against the memfd) and one more fact: *exported*, set by the broker before it reopens
//! a block from its owner's descriptor for anyone. The owner reads it once the handle is closed: a
//! block that left the process may be mapped elsewhere, so it is never recycled (see the client's
//! block pool). Only the owner clears it; the broker's writes of the word keep it.
//!
//! A `Reserved` slot holds a handle value the broker leased to another process for blocks it puts
//! into this table itself, over a *channel* (see [`crate::channel`]): the block is on its way, or
//! the value is not used yet. Whoever takes the block off the channel first — the owner, or the
//! broker when someone asks for the handle — swaps the slot to `Live` or `Pending`. While the owner
//! has a block off the channel but not yet in its slot, it keeps the header's *receiving* word
//! set, so that the broker never calls a handle closed that is only in the owner's hands.
//!
//! A handle value decides its slot ([`slot_of`]), so finding a handle is one load. The descriptor
//! in a `Live` state is the owner's descriptor number for the block: the broker reopens the block
//! from it (through `/proc/<pid>/fd`) when another process locks it, and checks what it got. The
//! broker never trusts the segment beyond its owner's own table: a segment its owner scribbled over
//! can only deny that owner's handles, or hand out memfds the owner holds anyway.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fd::AsFd;
use rustix::mm::{MapFlags, ProtFlags};

/// The smallest handle value.
pub const FIRST_HANDLE: u32 = 0x100;
/// One past the largest handle value: values survive truncation to 32 bits and sign extension.
pub const HANDLE_LIMIT: u32 = 1 << 31;
/// Handle values step by 4, as Windows handles do.
pub const HANDLE_STEP: u32 = 4;

/// The header's size in bytes.
pub const HEADER_BYTES: usize = 64;
/// One slot's size in bytes.
pub const SLOT_BYTES: usize = 16;
/// How many warm blocks of its pool the owner can show the broker (see [`Pooled`]).
pub const POOL_ENTRIES: usize = 32;
/// One pool entry's size in bytes: state u64 | deadline u64.
pub const POOL_ENTRY_BYTES: usize = 16;
/// Where the slots start, in bytes: after the header and the pool entries.
pub const SLOTS_AT: usize = HEADER_BYTES + POOL_ENTRIES * POOL_ENTRY_BYTES;
/// The most slots a segment may have (a table of more handles than this is refused).
pub const MAX_CAPACITY: usize = 1 << 20;

const STATUS_MASK: u64 = 0b11;
const STATUS_LIVE: u64 = 1;
const STATUS_PENDING: u64 = 2;
const STATUS_RESERVED: u64 = 3;
const FD_BITS: u32 = 30;
const FD_MASK: u64 = (1 << FD_BITS) - 1;
const FROZEN_BIT: u64 = 1 << 63;
const EXPORTED_BIT: u64 = 1 << 62;
const SIZE_MASK: u64 = EXPORTED_BIT - 1;

/// The bytes a segment of `capacity` slots occupies.
pub fn segment_bytes(capacity: usize) -> usize {
    SLOTS_AT + capacity * SLOT_BYTES
}

/// Whether `value` is a possible handle value.
pub fn is_handle_value(value: u32) -> bool {
    (FIRST_HANDLE..HANDLE_LIMIT).contains(&value) && value % HANDLE_STEP == 0
}

/// The slot that handle `value` lives in, in a table of `capacity` slots; `None` for a value no
/// handle can have.
pub fn slot_of(value: u32, capacity: usize) -> Option<usize> {
    if !is_handle_value(value) || capacity == 0 {
        return None;
    }
    Some(((value - FIRST_HANDLE) / HANDLE_STEP) as usize % capacity)
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No handle.
    Empty,
    /// An open handle whose block the owner holds as descriptor `fd`.
    Live {
        /// The handle value.
        handle: u32,
        /// The owner's descriptor for the block.
        fd: u32,
    },
    /// An open handle whose block the broker holds: another process put it there, and the owner has
    /// not taken its descriptor yet.
    Pending {
        /// The handle value.
        handle: u32,
    },
    /// A handle value leased to the process at the other end of channel `channel`: its block is
    /// on that channel, or not sent yet. Not an open handle until it becomes `Live` or `Pending`.
    Reserved {
        /// The handle value.
        handle: u32,
        /// The channel's number in this table (never 0).
        channel: u32,
    },
    /// A bit pattern neither side writes (the owner scribbled over its segment): no handle.
    Garbage(u64),
}

impl State {
    /// The state's word.
    pub fn encode(self) -> u64 {
        match self {
            State::Empty => 0,
            State::Live { handle, fd } => {
                (u64::from(handle) << 32) | ((u64::from(fd) & FD_MASK) << 2) | STATUS_LIVE
            }
            State::Pending { handle } => (u64::from(handle) << 32) | STATUS_PENDING,
            State::Reserved { handle, channel } => {
                (u64::from(handle) << 32) | ((u64::from(channel) & FD_MASK) << 2) | STATUS_RESERVED
            }
            State::Garbage(word) => word,
        }
    }

    /// Reads a word.
    pub fn decode(word: u64) -> State {
        let handle = (word >> 32) as u32;
        let fd = ((word >> 2) & FD_MASK) as u32;
        match word & STATUS_MASK {
            _ if word == 0 => State::Empty,
            STATUS_LIVE if is_handle_value(handle) => State::Live { handle, fd },
            STATUS_PENDING if is_handle_value(handle) && fd == 0 => State::Pending { handle },
            STATUS_RESERVED if is_handle_value(handle) && fd != 0 => State::Reserved {
                handle,
                channel: fd,
            },
            _ => State::Garbage(word),
        }
    }

    /// The handle this state holds open, if any (a `Reserved` value is not open yet).
    pub fn handle(self) -> Option<u32> {
        match self {
            State::Live { handle, .. } | State::Pending { handle } => Some(handle),
            State::Reserved { .. } | State::Empty | State::Garbage(_) => None,
        }
    }

    /// The handle value this state names, open or reserved.
    pub fn value(self) -> Option<u32> {
        match self {
            State::Reserved { handle, .. } => Some(handle),
            other => other.handle(),
        }
    }

    /// Whether a descriptor number fits in a state word.
    pub fn fd_fits(fd: u32) -> bool {
        u64::from(fd) <= FD_MASK
    }
}

/// The info word of a slot: the block's size and whether it is frozen (not exported).
pub fn encode_info(size: u64, frozen: bool) -> u64 {
    (size & SIZE_MASK) | if frozen { FROZEN_BIT } else { 0 }
}

/// Reads an info word back into (size, frozen).
pub fn decode_info(info: u64) -> (u64, bool) {
    (info & SIZE_MASK, info & FROZEN_BIT != 0)
}

/// A segment mapped into this process, read/write and shared.
#[derive(Debug)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the mapping is plain shared memory reached only through atomics; it may be used and
// unmapped from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above; every access through `&Segment` is an atomic operation.
unsafe impl Sync for Segment {}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of pool entries' deadlines, read by the owner that
/// writes them and by the broker that compares them.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// A pool entry's state: a warm block its owner keeps (in its own process's pool) and shows the
/// broker, so that the broker can give the block's pages back once the owner left it unused past
/// a deadline — also when the owner makes no call at all (no thread of ours runs in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooled {
    /// Nothing.
    Empty,
    /// The owner keeps the block as descriptor `fd`, unused.
    Kept {
        /// The owner's descriptor.
        fd: u32,
    },
    /// The broker is giving its pages back.
    Trimming {
        /// The owner's descriptor.
        fd: u32,
    },
    /// The broker gave its pages back: it reads as zeros, and its pages are holes.
    Trimmed {
        /// The owner's descriptor.
        fd: u32,
    },
}

impl Pooled {
    fn encode(self) -> u64 {
        let (fd, status) = match self {
            Pooled::Empty => return 0,
            Pooled::Kept { fd } => (fd, 1),
            Pooled::Trimming { fd } => (fd, 2),
            Pooled::Trimmed { fd } => (fd, 3),
        };
        (u64::from(fd) << 2) | status
    }

    fn decode(word: u64) -> Pooled {
        let fd = (word >> 2) as u32;
        match word & 0b11 {
            1 => Pooled::Kept { fd },
            2 => Pooled::Trimming { fd },
            3 => Pooled::Trimmed { fd },
            _ => Pooled::Empty,
        }
    }
}

impl Segment {
    /// Maps the segment behind `fd`, which must be at least [`segment_bytes`]`(capacity)` long and
    /// sealed against shrinking (the broker checks both on the memfds it makes; a client trusts
    /// its broker). With `private_to_process`, a forked child does not inherit the mapping.
    pub fn map(
        fd: impl AsFd,
        capacity: usize,
        private_to_process: bool,
    ) -> rustix::io::Result<Self> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(rustix::io::Errno::INVAL);
        }
        let len = segment_bytes(capacity);
        let stat = rustix::fs::fstat(&fd)?;
        if u64::try_from(stat.st_size).map_or(true, |size| size < len as u64) {
            return Err(rustix::io::Errno::INVAL);
        }
        // SAFETY: a new shared mapping at an address the kernel picks affects no existing memory;
        // the file is at least `len` bytes long and sealed against shrinking, so every byte of the
        // mapping stays backed.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(rustix::io::Errno::INVAL)?;
        let segment = Segment {
            base,
            len,
            capacity,
        };
        if private_to_process {
            // SAFETY: advice on a mapping this value owns; DONTFORK changes only what a child
            // inherits.
            unsafe {
                rustix::mm::madvise(ptr, len, rustix::mm::Advice::LinuxDontFork)?;
            }
        }
        Ok(segment)
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= self.len && offset % 8 == 0);
        // SAFETY: `offset` is 8-aligned and inside the mapping (callers index only the header and
        // slots below `capacity`); the mapping is page-aligned, lives as long as `self`, and is
        // only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn slot_word(&self, slot: usize, field: usize) -> Option<&AtomicU64> {
        (slot < self.capacity).then(|| self.word(SLOTS_AT + slot * SLOT_BYTES + field * 8))
    }

    /// The state of `slot` (`Empty` past the end).
    pub fn state(&self, slot: usize) -> State {
        self.slot_word(slot, 0)
            .map_or(State::Empty, |w| State::decode(w.load(Ordering::Acquire)))
    }

    /// Swaps `slot` from `old` to `new` if it still holds `old`; otherwise returns what it holds.
    pub fn swap(&self, slot: usize, old: State, new: State) -> Result<(), State> {
        let Some(word) = self.slot_word(slot, 0) else {
            return Err(State::Empty);
        };
        word.compare_exchange(
            old.encode(),
            new.encode(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .map(|_| ())
        .map_err(State::decode)
    }

    /// Writes the info word of `slot` (before the slot is made `Live` or `Pending`), keeping its
    /// exported mark.
    pub fn set_info(&self, slot: usize, size: u64, frozen: bool) {
        if let Some(word) = self.slot_word(slot, 1) {
            let info = encode_info(size, frozen);
            let _ = word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                Some(info | (old & EXPORTED_BIT))
            });
        }
    }

    /// Marks the block in `slot` as exported (the broker does, before it reopens the block).
    pub fn mark_exported(&self, slot: usize) {
        if let Some(word) = self.slot_word(slot, 1) {
            word.fetch_or(EXPORTED_BIT, Ordering::SeqCst);
        }
    }

    /// Clears `slot`'s exported mark and says whether it was set (the owner does, after the slot
    /// left `Live`): whether the broker may have reopened a block that was in it. A mark left
    /// from an earlier block only makes a later one look exported too, which costs only its
    /// recycling.
    pub fn take_exported(&self, slot: usize) -> bool {
        self.slot_word(slot, 1)
            .is_some_and(|w| w.fetch_and(!EXPORTED_BIT, Ordering::SeqCst) & EXPORTED_BIT != 0)
    }

    /// Whether the broker marked `slot`'s block exported (without clearing the mark).
    pub fn exported(&self, slot: usize) -> bool {
        self.slot_word(slot, 1)
            .is_some_and(|w| w.load(Ordering::SeqCst) & EXPORTED_BIT != 0)
    }

    /// The listing word of `slot`: (size, frozen).
    pub fn info(&self, slot: usize) -> (u64, bool) {
        self.slot_word(slot, 1)
            .map_or((0, false), |w| decode_info(w.load(Ordering::Acquire)))
    }

    /// Counts one free done by the broker in the owner's table (the owner then closes its
    /// descriptors of handles no longer `Live`).
    pub fn count_remote_free(&self) {
        self.word(8).fetch_add(1, Ordering::AcqRel);
    }

    /// How many frees the broker has done in this table.
    pub fn remote_frees(&self) -> u64 {
        self.word(8).load(Ordering::Acquire)
    }

    /// Records that the owner forked (its atfork handler does): a child may hold every block the
    /// owner held then, so when the owner exits, the broker tells no sender its blocks are free.
    pub fn note_fork(&self) {
        self.word(24).fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the owner said it forked.
    pub fn forks(&self) -> u64 {
        self.word(24).load(Ordering::SeqCst)
    }

    /// Marks that the owner is taking blocks off its channels (`true`) or is done (`false`).
    pub fn set_receiving(&self, receiving: bool) {
        self.word(16).store(u64::from(receiving), Ordering::SeqCst);
    }

    /// Whether the owner may hold a block it took off a channel but has not put in its slot yet.
    pub fn receiving(&self) -> bool {
        self.word(16).load(Ordering::SeqCst) != 0
    }

    fn pool_word(&self, entry: usize, field: usize) -> Option<&AtomicU64> {
        (entry < POOL_ENTRIES)
            .then(|| self.word(HEADER_BYTES + entry * POOL_ENTRY_BYTES + field * 8))
    }

    /// Shows the broker pool entry `entry`: the owner keeps descriptor `fd`, unused, and the
    /// broker may give its pages back after `deadline` (`CLOCK_MONOTONIC`, nanoseconds).
    pub fn show_pooled(&self, entry: usize, fd: u32, deadline: u64) {
        if let (Some(state), Some(when)) = (self.pool_word(entry, 0), self.pool_word(entry, 1)) {
            when.store(deadline, Ordering::SeqCst);
            state.store(Pooled::Kept { fd }.encode(), Ordering::SeqCst);
        }
    }

    /// Moves pool entry `entry`'s deadline to `deadline` (the broker does, for a block it could
    /// not trim: never again).
    pub fn postpone_pooled(&self, entry: usize, deadline: u64) {
        if let Some(when) = self.pool_word(entry, 1) {
            when.store(deadline, Ordering::SeqCst);
        }
    }

    /// Pool entry `entry`: its state and its deadline.
    pub fn pooled(&self, entry: usize) -> (Pooled, u64) {
        match (self.pool_word(entry, 0), self.pool_word(entry, 1)) {
            (Some(state), Some(when)) => (
                Pooled::decode(state.load(Ordering::SeqCst)),
                when.load(Ordering::SeqCst),
            ),
            _ => (Pooled::Empty, 0),
        }
    }

    /// Swaps pool entry `entry` from `old` to `new` if it still holds `old`; otherwise returns
    /// what it holds.
    pub fn swap_pooled(&self, entry: usize, old: Pooled, new: Pooled) -> Result<(), Pooled> {
        let Some(word) = self.pool_word(entry, 0) else {
            return Err(Pooled::Empty);
        };
        word.compare_exchange(
            old.encode(),
            new.encode(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .map(|_| ())
        .map_err(Pooled::decode)
    }

    /// Empties pool entry `entry` whatever it holds (the owner does, before it closes the
    /// descriptor or reuses the block).
    pub fn clear_pooled(&self, entry: usize) -> Pooled {
        self.pool_word(entry, 0).map_or(Pooled::Empty, |w| {
            Pooled::decode(w.swap(Pooled::Empty.encode(), Ordering::SeqCst))
        })
    }

    /// Writes the capacity into the header (the broker does, once).
    pub fn write_header(&self) {
        self.word(0).store(self.capacity as u64, Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: [base, base + len) is exactly the mapping this value made; nothing else refers
        // to it once the value is dropped (slot references borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_garbage_is_no_handle() {
        for state in [
            State::Empty,
            State::Live {
                handle: 0x104,
                fd: 7,
            },
            State::Live {
                handle: HANDLE_LIMIT - 4,
                fd: (1 << 30) - 1,
            },
            State::Pending { handle: 0x7ffc },
            State::Reserved {
                handle: 0x108,
                channel: 1,
            },
        ] {
            assert_eq!(State::decode(state.encode()), state);
        }
        for garbage in [
            1u64,
            3,
            (5u64 << 32) | 1,
            (0x100u64 << 32) | 3,
            (5u64 << 32) | (1 << 2) | 3,
            (0x100 << 32) | 6,
        ] {
            assert!(State::decode(garbage).handle().is_none(), "{garbage:#x}");
        }
    }

    #[test]
    fn slots_follow_values() {
        assert_eq!(slot_of(FIRST_HANDLE, 10), Some(0));
        assert_eq!(slot_of(FIRST_HANDLE + 4 * 13, 10), Some(3));
        assert_eq!(slot_of(FIRST_HANDLE + 2, 10), None);
        assert_eq!(slot_of(0, 10), None);
        assert_eq!(slot_of(HANDLE_LIMIT, 10), None);
    }

    #[test]
    fn the_exported_mark_survives_the_brokers_info_writes_until_the_owner_takes_it() {
        let fd = rustix::fs::memfd_create(c"seg", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, segment_bytes(4) as u64).unwrap();
        let segment = Segment::map(&fd, 4, false).unwrap();
        assert!(!segment.take_exported(1));
        segment.set_info(1, 100, false);
        segment.mark_exported(1);
        segment.set_info(1, 200, true);
        assert_eq!(
            segment.info(1),
            (200, true),
            "the mark is not part of the size"
        );
        assert!(segment.take_exported(1));
        assert!(!segment.take_exported(1), "taken once");
        assert_eq!(segment.info(1), (200, true));
        assert!(!segment.take_exported(9), "past the end");
    }

    #[test]
    fn info_keeps_size_and_frozen() {
        assert_eq!(decode_info(encode_info(12345, true)), (12345, true));
        assert_eq!(decode_info(encode_info(0, false)), (0, false));
    }
}
