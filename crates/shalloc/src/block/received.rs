//! Mappings of blocks this process gave back to their makers, kept for when the same block comes
//! back to us.
//!
//! A block another process lent us over its channel goes back to it once closed and unmapped
//! here, and it reuses the block only for blocks it puts into our table (see the pool). So the
//! next time it arrives, it is very likely one we had: keeping our mapping of it (and the
//! descriptor, which keeps the memfd and its inode number ours) saves mapping it again and
//! faulting its pages in. Nothing shows through that we could not see anyway: the block is reused
//! only for our own table.
//!
//! A block that arrives is matched by its channel, the tag its sender gives that memfd in every
//! delivery, and its inode: the sender reuses it under the same tag, and a sender that lies
//! (another memfd under a tag we kept) is caught by the inode, or at worst — an inode number that
//! came round again while we kept the old memfd — shows us its own earlier bytes. Bounded as the
//! pool is: at most [`MAX_KEPT`] blocks and the pool's byte cap (a newcomer to a full cache is let
//! go, not an older mapping), and a mapping unused for the pool's idle time is dropped on the next
//! call that touches the pool; those of a channel that closed go at once; [`crate::pool::trim`]
//! drops them all.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use shalloc_protocol::channel;
use shalloc_protocol::wire::TAG_WANTS_RETURN;

use super::mapping::{Mapping, pages};
use super::pool;

/// The most mappings kept (each holds a descriptor).
const MAX_KEPT: usize = 32;

#[derive(Debug)]
struct Kept {
    /// The channel the block came over (and went back over).
    channel: Arc<OwnedFd>,
    /// Its sender's tag for it (without [`TAG_WANTS_RETURN`]).
    tag: u32,
    /// The memfd's (device, inode).
    id: (u64, u64),
    /// Kept open, so that the memfd, and so its inode number, stays ours while we keep it.
    _fd: OwnedFd,
    mapping: Mapping,
    since: Instant,
}

/// What is kept, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Received(Vec<Kept>);

static RECEIVED: Mutex<Received> = Mutex::new(Received(Vec::new()));

pub(crate) fn lock_received() -> MutexGuard<'static, Received> {
    RECEIVED.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Received {
    fn drop_idle(&mut self, now: Instant) {
        let idle = pool::idle_time();
        let stale = self
            .0
            .iter()
            .take_while(|k| now.duration_since(k.since) >= idle)
            .count();
        self.0.drain(..stale);
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|k| k.mapping.len() as u64).sum()
    }

    /// Forgets everything (unmapping, closing): after a fork, in the child, and for a trim.
    pub fn clear(&mut self) -> usize {
        self.0.drain(..).count()
    }

    /// Drops the oldest until at most `cap` bytes are kept (none when `cap` is 0).
    pub fn shrink_to(&mut self, cap: u64) {
        while !self.0.is_empty() && (cap == 0 || self.bytes() > cap) {
            self.0.remove(0);
        }
    }
}

/// Drops what was kept longer than the pool's idle time (called by every call that touches the
/// pool, so an idle mapping goes on the process's next allocation or release).
pub(crate) fn drop_idle(now: Instant) {
    let mut kept = lock_received();
    if !kept.0.is_empty() {
        kept.drop_idle(now);
    }
}

/// Gives the block delivered under (`handle`, `tag`) over `channel` back to its sender, if it
/// asked for it back ([`TAG_WANTS_RETURN`]) and no fork happened since the block came
/// (`generation`), keeping `mapping` of it (and `fd`, the descriptor of memfd `id`) for when it
/// comes back. All under this module's lock, which a fork takes first: a fork cannot slip in
/// between the check and the return.
pub(crate) fn give_back(
    channel: &Arc<OwnedFd>,
    (fd, id): (OwnedFd, (u64, u64)),
    mapping: Option<Mapping>,
    (handle, tag): (u32, u32),
    generation: u64,
) {
    if tag & TAG_WANTS_RETURN == 0 {
        return;
    }
    let cap = pool::byte_cap();
    let now = Instant::now();
    let mut kept = lock_received();
    if generation != pool::generation() {
        return;
    }
    kept.drop_idle(now);
    let fits = |bytes: u64| {
        bytes <= cap && kept.0.len() < MAX_KEPT && kept.bytes().saturating_add(bytes) <= cap
    };
    if let Some(mapping) = mapping.filter(|m| fits(m.len() as u64)) {
        kept.0.push(Kept {
            channel: Arc::clone(channel),
            tag: tag & !TAG_WANTS_RETURN,
            id,
            _fd: fd,
            mapping,
            since: now,
        });
    }
    // If the sender cannot take it now, it simply never recycles the block, nor any other of
    // that channel's: what we kept of them goes too.
    if !channel::give_back(channel.as_fd(), handle, tag) {
        kept.0.retain(|k| !Arc::ptr_eq(&k.channel, channel));
    }
}

/// The mapping we kept of the block that came over `channel` tagged `tag`, memfd `id`, if we kept
/// one of `size` bytes (in pages); a kept one of another memfd or length under that tag is dropped.
pub(crate) fn find(channel: &Arc<OwnedFd>, tag: u32, id: (u64, u64), size: u64) -> Option<Mapping> {
    let mut kept = lock_received();
    if kept.0.is_empty() {
        return None;
    }
    kept.drop_idle(Instant::now());
    let tag = tag & !TAG_WANTS_RETURN;
    let at = kept
        .0
        .iter()
        .rposition(|k| k.tag == tag && Arc::ptr_eq(&k.channel, channel))?;
    let found = kept.0.remove(at);
    (found.id == id && found.mapping.len() as u64 == pages(size)).then_some(found.mapping)
}

/// Drops what was kept of blocks that came over `channel`: its sender is gone, or no longer takes
/// blocks back, so none of them will come again.
pub(crate) fn forget_channel(channel: &Arc<OwnedFd>) {
    let mut kept = lock_received();
    kept.0.retain(|k| !Arc::ptr_eq(&k.channel, channel));
}

/// How many mappings are kept, and their bytes.
pub(crate) fn counts() -> (usize, u64) {
    let kept = lock_received();
    (kept.0.len(), kept.bytes())
}
