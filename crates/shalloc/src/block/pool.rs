//! This process's pool of warm blocks: memfds whose pages stay allocated after their last handle
//! and view went, ready for the next allocation of the same class.
//!
//! A fresh shmem page costs more than the copy into it, so a block that comes back here saves the
//! next allocation its `memfd_create`, its seals and its fresh pages; it also keeps its read/write
//! mapping ([`Mapping`]), so the next contents are copied into pages already mapped. Which blocks
//! come back is decided by [`Block`](super::held::Block): only blocks this process made, never
//! frozen, that reached at most one other process — the one it lent them to over a channel, which
//! gave them back — and nobody else (not sent through the broker, not reopened by the broker for
//! anyone, no fork since they were made). A block is reused only for our own table, or for the
//! table of the one process that held it: the only processes that can see a pooled block's old or
//! new bytes are those that may see them anyway.
//!
//! Bounded: at most [`MAX_BLOCKS`] blocks and `SHALLOC_POOL_BYTES` bytes of written pages (default
//! 256 MiB; 0 turns recycling off). A block that comes back to a full pool is let go, not an older
//! one: a process that cycles through more blocks than fit then keeps reusing those that do, where
//! putting out the oldest would miss every time (measured: 8 sizes of 2–16 MiB in turn ran 1.3×
//! slower than fresh blocks that way). A block idle for `SHALLOC_POOL_IDLE_MS` (default 2000) is
//! given back on the next call that touches the pool, with no thread of ours in the process, so the
//! pool follows a process whose sizes change within that time. Both settings are read once, at the
//! pool's first use; [`set_limit`] changes the cap at run time, [`without_recycling`] turns
//! recycling off for a while on one thread, and [`trim`] gives everything back at once.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use shalloc_protocol::segment::{POOL_ENTRIES, Pooled as SegPooled, Segment, monotonic_ns};

use super::mapping::{Mapping, pages};
use super::received;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The environment variable that caps the pool's written bytes (0 turns recycling off).
pub const POOL_BYTES_ENV: &str = "SHALLOC_POOL_BYTES";
/// The environment variable that sets how long a pooled block may stay unused, in milliseconds.
pub const POOL_IDLE_ENV: &str = "SHALLOC_POOL_IDLE_MS";

/// The default cap on written bytes kept: 256 MiB. Kept pages cost memory only while a process
/// keeps using blocks of their size: unused past the idle time, they are given back (by the
/// broker if the process makes no call).
const DEFAULT_BYTES: u64 = 256 << 20;
/// The default time a block may wait unused: 2 s.
const DEFAULT_IDLE: Duration = Duration::from_secs(2);
/// The most blocks kept (each is a descriptor of this process).
pub(crate) const MAX_BLOCKS: usize = 32;

/// A block waiting in the pool.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub fd: OwnedFd,
    /// The memfd's length (its class).
    pub len: u64,
    /// The bytes from 0 that may be non-zero; every byte past them is zero.
    pub dirty: u64,
    /// The bytes from 0 whose pages we wrote or reserved (writing there allocates nothing).
    pub warm: u64,
    /// The read/write mapping it keeps (see [`Mapping`]), if it has one yet.
    pub mapping: Option<Mapping>,
    /// The one other process that held the block (0: none): it is reused only for blocks put
    /// into that process's table, which it may see anyway.
    pub lessee: u32,
    /// Whether it came back from a process that exited (see [`take`]): reused only for our own
    /// table, and only while we are dumpable.
    pub orphan: bool,
    /// The tag that names it in deliveries (see [`Block`](super::held::Block)).
    pub tag: u32,
    since: Instant,
    /// The segment entry that shows it to the broker, if one does (see [`show`]).
    shown: Option<(Arc<Segment>, usize)>,
}

/// The pool's contents, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    blocks: Vec<Pooled>,
    bytes: u64,
    /// The own table's segment, where pooled blocks are shown to the broker.
    segment: Option<Arc<Segment>>,
    /// The process the pool belongs to (0 before its first use).
    owner: u32,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    bytes: u64,
    idle: Duration,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    blocks: Vec::new(),
    bytes: 0,
    segment: None,
    owner: 0,
});

/// Counts forks of this process (see [`after_fork`]).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A cap set by [`set_limit`], overriding the environment (`u64::MAX`: none set).
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

fn settings() -> Settings {
    static FROM_ENV: OnceLock<Settings> = OnceLock::new();
    let from_env = *FROM_ENV.get_or_init(|| {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Settings {
            bytes: number(POOL_BYTES_ENV).unwrap_or(DEFAULT_BYTES),
            idle: number(POOL_IDLE_ENV).map_or(DEFAULT_IDLE, Duration::from_millis),
        }
    });
    match LIMIT.load(Ordering::Relaxed) {
        u64::MAX => from_env,
        bytes => Settings { bytes, ..from_env },
    }
}

/// Caps the pool's written bytes from now on, overriding `SHALLOC_POOL_BYTES` (`Some(0)` turns
/// recycling off; `None` goes back to the environment's cap or the default). Blocks over the new
/// cap are given back at once.
///
/// ```
/// shalloc::pool::set_limit(Some(0)); // every block fresh from now on
/// assert_eq!(shalloc::pool::pooled(), (0, 0));
/// shalloc::pool::set_limit(None);
/// ```
pub fn set_limit(bytes: Option<u64>) {
    LIMIT.store(
        bytes.map_or(u64::MAX, |b| b.min(u64::MAX - 1)),
        Ordering::Relaxed,
    );
    let cap = settings().bytes;
    let mut pool = lock_pool();
    while (pool.bytes > cap || cap == 0) && !pool.blocks.is_empty() {
        pool.evict_oldest();
    }
    drop(pool);
    received::lock_received().shrink_to(cap);
}

pub(crate) fn lock_pool() -> MutexGuard<'static, Pool> {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let me = crate::own_pid::get();
    if pool.owner != me {
        if pool.owner != 0 {
            // A child made without `fork()`'s handlers (a raw `clone`): what it inherited points
            // into the parent's segment, which it does not have, and may be held by the parent.
            GENERATION.fetch_add(1, Ordering::SeqCst);
            pool.clear_in_child();
            received::lock_received().clear();
        }
        pool.owner = me;
    }
    pool
}

/// The cap on bytes kept (0: recycling is off).
pub(crate) fn byte_cap() -> u64 {
    settings().bytes
}

/// How long a kept block may wait unused.
pub(crate) fn idle_time() -> Duration {
    settings().idle
}

thread_local! {
    /// Whether this thread is inside [`without_recycling`].
    static BYPASSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with recycling off for the blocks this thread makes meanwhile: they come fresh and
/// are never kept, and the pool keeps what it holds for later (unlike `set_limit(Some(0))`, which
/// empties it). For a one-off block that should not take a warm one's place, or to measure the
/// cost of fresh blocks beside warm ones in one process.
///
/// ```no_run
/// let me = shalloc::Pid::current();
/// let handle = shalloc::pool::without_recycling(|| shalloc::alloc(b"one-off", me))?;
/// shalloc::free(handle, me)?; // closed, not pooled
/// # Ok::<(), shalloc::Error>(())
/// ```
pub fn without_recycling<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BYPASSED.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BYPASSED.with(|b| b.replace(true)));
    f()
}

/// Whether recycling is on (for this thread): new blocks that may come back are then made a class
/// long.
pub(crate) fn enabled() -> bool {
    settings().bytes > 0 && !BYPASSED.with(Cell::get)
}

/// The current fork generation.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// The bytes of a block of `size` bytes (and `len` long) that a view may have written: its size
/// rounded up to whole pages (a view maps whole pages).
pub(crate) fn dirty_extent(size: u64, len: u64) -> u64 {
    pages(size).min(len)
}

impl Pool {
    /// Takes the block at `at` out, keeping the count of written bytes; its segment entry is
    /// emptied (before its descriptor can be closed or the block reused).
    fn remove(&mut self, at: usize) -> Pooled {
        let mut block = self.blocks.remove(at);
        self.bytes -= block.dirty;
        hide(&mut block);
        block
    }

    /// Lets the oldest block go (see [`discard`]).
    fn evict_oldest(&mut self) {
        let block = self.remove(0);
        discard(&block.fd, block.len, block.lessee);
    }

    fn drop_idle(&mut self, now: Instant, idle: Duration) {
        while self
            .blocks
            .first()
            .is_some_and(|b| now.duration_since(b.since) >= idle)
        {
            self.evict_oldest();
        }
    }

    /// Forgets every block (closing its descriptor), for [`trim`].
    pub fn clear(&mut self) -> usize {
        let n = self.blocks.len();
        while !self.blocks.is_empty() {
            self.evict_oldest();
        }
        n
    }

    /// Forgets every block in a forked child, without touching the segment (the child does not
    /// have it: it is mapped `MADV_DONTFORK`).
    fn clear_in_child(&mut self) {
        for mut block in self.blocks.drain(..) {
            if let Some((segment, _)) = block.shown.take() {
                std::mem::forget(segment);
            }
        }
        if let Some(segment) = self.segment.take() {
            std::mem::forget(segment);
        }
        self.bytes = 0;
    }
}

/// Shows `block`, just pooled, to the broker in a free entry of `segment`: past the idle time it
/// may punch the block's pages out even if we make no call (see the broker's `trim`).
fn show(pool: &Pool, segment: &Arc<Segment>, fd: &OwnedFd, idle: Duration) -> Option<usize> {
    let used = |entry: usize| {
        pool.blocks.iter().any(|b| {
            b.shown
                .as_ref()
                .is_some_and(|(s, e)| *e == entry && Arc::ptr_eq(s, segment))
        })
    };
    let entry = (0..POOL_ENTRIES).find(|&e| !used(e))?;
    let raw = u32::try_from(fd.as_raw_fd()).ok()?;
    let deadline =
        monotonic_ns().saturating_add(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX));
    segment.show_pooled(entry, raw, deadline);
    Some(entry)
}

/// Empties `block`'s segment entry, if it has one: from then on the broker leaves it alone. A
/// block the broker emptied meanwhile comes back with no written bytes and no pages.
fn hide(block: &mut Pooled) {
    if let Some((segment, entry)) = block.shown.take() {
        if let SegPooled::Trimmed { .. } = segment.clear_pooled(entry) {
            block.dirty = 0;
            block.warm = 0;
        }
    }
}

/// Before a block `len` long is let go: one that came back from `lessee` (not 0) has its pages
/// punched out, since the lessee may keep a mapping of it for its return (see `received`), which
/// would otherwise keep the pages alive until its next call.
fn discard(fd: &OwnedFd, len: u64, lessee: u32) {
    if lessee != 0 && len > 0 {
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        let _ = rustix::fs::fallocate(fd, flags, 0, len);
    }
}

/// Lets the pool show its blocks to the broker in `segment`, the own table's (when the table
/// attaches; a new broker's segment replaces the old one's).
pub(crate) fn attach_segment(segment: Arc<Segment>) {
    let idle = settings().idle;
    let mut pool = lock_pool();
    pool.segment = Some(Arc::clone(&segment));
    // Blocks pooled under an old broker: shown to the new one instead.
    for at in 0..pool.blocks.len() {
        let stale = pool.blocks[at]
            .shown
            .as_ref()
            .is_none_or(|(s, _)| !Arc::ptr_eq(s, &segment));
        if !stale {
            continue;
        }
        let dirty = pool.blocks[at].dirty;
        hide(&mut pool.blocks[at]);
        pool.bytes -= dirty - pool.blocks[at].dirty;
        let entry = show(&pool, &segment, &pool.blocks[at].fd, idle);
        pool.blocks[at].shown = entry.map(|e| (Arc::clone(&segment), e));
    }
}

/// A block on its way back to the pool.
pub(crate) struct Returning {
    pub fd: OwnedFd,
    pub mapping: Option<Mapping>,
    /// The memfd's length.
    pub len: u64,
    /// The bytes from 0 that may be non-zero.
    pub dirty: u64,
    /// The bytes from 0 whose pages we wrote or reserved.
    pub warm: u64,
    /// The one other process that held it (0: nobody).
    pub lessee: u32,
    /// Whether it came back from a process that exited.
    pub orphan: bool,
    /// The fork generation when the block came to this process.
    pub generation: u64,
    /// The tag that names it in deliveries.
    pub tag: u32,
}

/// Keeps a returning block for a later allocation; closes it instead when the pool is off or it
/// does not fit.
pub(crate) fn put(block: Returning) {
    let Returning {
        fd,
        mapping,
        len,
        dirty,
        warm,
        lessee,
        orphan,
        generation,
        tag,
    } = block;
    let settings = settings();
    if len == 0 || dirty > settings.bytes {
        discard(&fd, len, lessee);
        return;
    }
    let now = Instant::now();
    received::drop_idle(now);
    let mut pool = lock_pool();
    if generation != GENERATION.load(Ordering::SeqCst) {
        // A fork since the block came (checked under the lock the fork takes): a child may hold it.
        return;
    }
    pool.drop_idle(now, settings.idle);
    if pool.blocks.len() >= MAX_BLOCKS || pool.bytes + dirty > settings.bytes {
        // Full: this one goes, not an older one (see the module's notes).
        drop(pool);
        discard(&fd, len, lessee);
        return;
    }
    pool.bytes += dirty;
    let shown = pool
        .segment
        .clone()
        .and_then(|segment| show(&pool, &segment, &fd, settings.idle).map(|e| (segment, e)));
    pool.blocks.push(Pooled {
        fd,
        len,
        dirty,
        warm,
        mapping,
        lessee,
        orphan,
        tag,
        since: now,
        shown,
    });
}

/// Takes the most recently kept block `len` bytes long (the warmest) that may go into the table
/// of process `target` (0: our own): one nobody else held, or one only `target` held — only one
/// nobody else held when `exclusive` (a block to be handed to a fill function as `&mut [u8]`).
///
/// Or, for our own table, one whose only other holder exited with it clean (an orphan), and only
/// while this process is dumpable. The dead holder ran as our user (it could be written to by us),
/// so while we are dumpable it could have read all our memory through ptrace, and could have left
/// a helper doing so; whatever it passed the descriptor to before it died sees nothing that such
/// a helper could not (the access rule of our table is ptrace's). A process that made itself
/// non-dumpable never reuses an orphan.
pub(crate) fn take(len: u64, target: u32, exclusive: bool) -> Option<Pooled> {
    if len == 0 || !enabled() {
        return None;
    }
    let now = Instant::now();
    received::drop_idle(now);
    let mut pool = lock_pool();
    pool.drop_idle(now, settings().idle);
    let mut dumpable = None;
    let mut fits = |b: &Pooled| {
        if b.len != len {
            return false;
        }
        if exclusive {
            return b.lessee == 0 && !b.orphan;
        }
        if b.orphan {
            target == 0 && *dumpable.get_or_insert_with(is_dumpable)
        } else {
            b.lessee == 0 || b.lessee == target
        }
    };
    // The warmest first; one the broker is emptying right now is passed over.
    for at in (0..pool.blocks.len()).rev() {
        if !fits(&pool.blocks[at]) {
            continue;
        }
        if let Some((segment, entry)) = &pool.blocks[at].shown {
            // Claimed by a swap, so that the broker cannot start emptying it from now on. One it
            // emptied already (`Trimmed`) is taken as empty (see `hide`).
            let fd = u32::try_from(pool.blocks[at].fd.as_raw_fd()).unwrap_or(u32::MAX);
            let kept = SegPooled::Kept { fd };
            if let Err(SegPooled::Trimming { .. }) =
                segment.swap_pooled(*entry, kept, SegPooled::Empty)
            {
                continue;
            }
        }
        return Some(pool.remove(at));
    }
    None
}

/// Whether this process may be read through ptrace by its user's other processes.
fn is_dumpable() -> bool {
    matches!(
        rustix::process::dumpable_behavior(),
        Ok(rustix::process::DumpableBehavior::Dumpable)
    )
}

/// Called after every `fork` (see the client's atfork handlers): blocks made before it may now
/// be held by the child too, so none of them is recycled; the child also drops the pool it
/// inherited.
pub(crate) fn after_fork(pool: &mut Pool, received: &mut received::Received, in_child: bool) {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    if in_child {
        pool.clear_in_child();
        received.clear();
        pool.owner = crate::own_pid::get();
    }
}

/// Gives every kept block back to the system now: their descriptors are closed, their mappings
/// unmapped and their pages freed. Returns how many there were. Recycling goes on with the next
/// block that comes back.
pub fn trim() -> usize {
    let pooled = lock_pool().clear();
    pooled + received::lock_received().clear()
}

/// How many blocks this process keeps for reuse, and their bytes (for tests and diagnostics):
/// blocks it made, waiting in the pool (their written bytes), and blocks it gave back to the
/// process that lent them, kept mapped for their return (their mapped bytes). Each holds one
/// descriptor.
pub fn pooled() -> (usize, u64) {
    let (count, bytes) = {
        let pool = lock_pool();
        (pool.blocks.len(), pool.bytes)
    };
    let (kept, kept_bytes) = received::counts();
    (count + kept, bytes + kept_bytes)
}
