//! Giving back the pages of warm blocks that their owners keep unused past a deadline.
//!
//! A client keeps the blocks it may recycle in a pool of its own, and shows each to the broker in
//! its segment ([`Pooled`]) with the moment after which it would rather have the pages back. The
//! client gives an idle block back itself on its next call, but no thread of ours runs in it: a
//! client that stops calling would keep its pool forever. So the broker, on its own clock, punches
//! the pages of every block past its deadline out of the memfd (the memfd stays, its pages go),
//! swapping the entry to `Trimming` first and to `Trimmed` after: the client takes a block only by
//! swapping its entry from `Kept` (or `Trimmed`, knowing it is empty), so it never refills a block
//! the broker is emptying.
//!
//! Nothing in the segment is believed beyond its owner: the descriptor is opened again through
//! `/proc` (as for a lock) and must be a sealed memfd that may be written; the entry must still
//! say `Trimming` once it is open (the client empties an entry before it closes or reuses the
//! descriptor, so a descriptor number reused since cannot be taken for the block). At worst a
//! scribbled entry makes the broker punch holes in one of the owner's own memfds, which the owner
//! could do itself.

use rustix::fs::{FallocateFlags, SealFlags};
use shalloc_protocol::segment::{POOL_ENTRIES, Pooled, Segment};

use crate::process::Process;
use crate::reopen::open_regular;
use crate::tables::Tables;

/// Punches out the pages of every pooled block past its deadline (`now`: `CLOCK_MONOTONIC`, in
/// nanoseconds) in every attached table: how many blocks.
pub(crate) fn trim_idle(tables: &Tables, now: u64) -> usize {
    let mut trimmed = 0;
    for table in tables.iter().filter(|t| t.attached.is_some()) {
        for entry in 0..POOL_ENTRIES {
            let (state, deadline) = table.segment.pooled(entry);
            let Pooled::Kept { fd } = state else {
                continue;
            };
            let trimming = Pooled::Trimming { fd };
            if deadline > now || table.segment.swap_pooled(entry, state, trimming).is_err() {
                continue;
            }
            if punch(&table.process, &table.segment, entry, fd) {
                trimmed += 1;
                // The client finds it `Trimmed` and refills it as empty (or emptied the entry
                // meanwhile).
                let _ = table
                    .segment
                    .swap_pooled(entry, trimming, Pooled::Trimmed { fd });
            } else {
                // Untouched: `Kept` again, its pages as they were, and never tried again.
                table.segment.postpone_pooled(entry, u64::MAX);
                let _ = table.segment.swap_pooled(entry, trimming, state);
            }
        }
    }
    trimmed
}

/// Punches out all the pages of descriptor `fd` of `owner`, shown in pool entry `entry`: whether
/// it did.
fn punch(owner: &Process, segment: &Segment, entry: usize, fd: u32) -> bool {
    let Ok(file) = open_regular(owner, fd) else {
        return false;
    };
    // Opened while the entry still said `Trimming`: the file is the block it showed.
    if segment.pooled(entry).0 != (Pooled::Trimming { fd }) {
        return false;
    }
    let required = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let sealed = rustix::fs::fcntl_get_seals(&file)
        .is_ok_and(|s| s.contains(required) && !s.contains(SealFlags::WRITE));
    let Ok(stat) = rustix::fs::fstat(&file) else {
        return false;
    };
    let len = u64::try_from(stat.st_size).unwrap_or(0);
    sealed
        && len > 0
        && rustix::fs::fallocate(
            &file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            len,
        )
        .is_ok()
}
