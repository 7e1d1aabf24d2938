//! Recycling of blocks through the per-process pool (`shalloc::pool`), checked on the memfds
//! themselves: which inode a new block gets, how long its memfd is, and what its bytes are through
//! a view and through the descriptor.
//!
//! 1. A recycled block shows its new bytes and zeros past them — up to the end of the view's last
//!    page and the end of the memfd — whatever the old block held, for `alloc`, `alloc_zeroed`
//!    and `alloc_with` (whose fill function sees zeros only), and the pages past its last page are
//!    given back (holes). Recycling does happen: the new block has the old one's inode.
//! 2. A block still mapped here is not reused while its view lives (the view would see the next
//!    block's bytes), and comes back once the view goes.
//! 3. A block another process locked through our table (the broker reopened it) is never reused:
//!    that process could still hold it. One only we ever locked is.
//! 4. A block alive at a `fork` is never reused: the child inherited its mapping (and checks it).
//!    One made after the fork is.
//! 5. A block sent to another table is never reused for anyone but its receiver: one that went
//!    through the broker (the receiver had not attached its table) never comes back at all; one
//!    that went over a channel (`map_handle` into an attached table) comes back and is reused for
//!    that receiver's table only — never for our own table or a third process's. A receiver that
//!    kept a duplicate descriptor of such a block sees nothing but bytes meant for it. (Hand-off
//!    recycling in depth is `recycling_handoff.rs`.)
//! 6. The pool holds at most 32 blocks (the newest), and `trim` closes them all.
//! 7. `SHALLOC_POOL_BYTES=0` turns recycling off: nothing pooled, memfds exactly their size.
//! 8. `SHALLOC_POOL_IDLE_MS`: an idle block is given back on the next call that touches the pool
//!    (no thread of ours in the process), and not before its time.
//! 9. `SHALLOC_POOL_BYTES` caps the written bytes kept: a block that comes back to a full pool
//!    goes (what the pool holds stays), and a block larger than the cap is never kept.
//!
//! A block's memfd shows in `/proc/self/fd` as `/memfd:shalloc (deleted)` (the own table's
//! segment is `memfd:shalloc-table`, and is not counted). Its inode is found from a view's mapping
//! in `/proc/self/maps`; memfd inodes are not handed out again while a test runs, so the same inode
//! means the same memfd. Settings from the environment are read once, at the pool's first use, so
//! the tests that change them do so in a forked child before its first shalloc call; every test
//! process keeps pooled blocks for a minute (`test_env`), so a loaded machine cannot turn an
//! expected reuse into a fresh block.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestEnv;
use procs::{Child, End, fork_with_channel};
use shalloc::pool::{POOL_BYTES_ENV, POOL_IDLE_ENV, pooled, trim};
use shalloc::{Handle, Pid, View, alloc, alloc_with, alloc_zeroed, free, lock, map_handle};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What `/proc/self/fd/N` reads for a block's memfd (`memfd_create("shalloc")`).
const BLOCK_LINK: &str = "/memfd:shalloc (deleted)";

/// Messages between a test and its child.
const HOLDING: u32 = 1;
const FREED: u32 = 2;
const UNLOCKED: u32 = 3;
const DONE: u32 = 4;
const ATTACHED: u32 = 5;

/// A block's memfd as this process holds it, opened again through `/proc/self/fd`.
struct Memfd {
    file: File,
    ino: u64,
    /// The memfd's length (`st_size`): the block's size, or its class.
    len: u64,
}

impl Memfd {
    fn open(path: &Path, write: bool) -> Memfd {
        let file = File::options()
            .read(true)
            .write(write)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let meta = file.metadata().unwrap();
        Memfd {
            file,
            ino: meta.ino(),
            len: meta.len(),
        }
    }

    /// `len` bytes from `offset`, read through the descriptor (`pread`), not through a mapping.
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// Whether any page at or past `offset` holds data (`SEEK_DATA`): a punched hole has none.
    fn has_data_from(&self, offset: u64) -> bool {
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(_) => true,
            Err(rustix::io::Errno::NXIO) => false,
            Err(e) => panic!("lseek(SEEK_DATA): {e}"),
        }
    }
}

/// The paths (`/proc/self/fd/N`) and inodes of the block memfds this process has open, one per
/// inode. Collected before anything is opened, so our own opens never show up in the listing.
fn block_fds() -> Vec<(PathBuf, u64)> {
    let entries: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.as_os_str() == BLOCK_LINK))
        .filter_map(|p| {
            let ino = std::fs::metadata(&p).ok()?.ino();
            seen.insert(ino).then_some((p, ino))
        })
        .collect()
}

/// The inodes of the block memfds this process has open.
fn block_inodes() -> HashSet<u64> {
    block_fds().into_iter().map(|(_, ino)| ino).collect()
}

/// The only block memfd this process holds (the test trimmed the pool and holds one block).
fn only_block() -> Memfd {
    let fds = block_fds();
    assert_eq!(
        fds.len(),
        1,
        "expected exactly one block memfd open: {:?}",
        support::fd_targets("self")
    );
    Memfd::open(&fds[0].0, false)
}

/// The block memfd with inode `ino` that this process holds.
fn block_with_inode(ino: u64, write: bool) -> Memfd {
    let (path, _) = block_fds()
        .into_iter()
        .find(|(_, i)| *i == ino)
        .unwrap_or_else(|| panic!("no block memfd with inode {ino} is open here"));
    Memfd::open(&path, write)
}

/// The inode of the block a view shows (from `/proc/self/maps`: a view starts a mapping).
fn view_inode(view: &View) -> u64 {
    support::inode_mapped_at(view.as_ptr() as usize).expect("a view's mapping in /proc/self/maps")
}

/// The bytes of a view's mapping, `size` rounded up to whole pages (and no further than the memfd
/// is long): what the process can read through the view's pages, past its size included.
fn mapped_bytes(view: &View, memfd_len: u64) -> Vec<u8> {
    let page = rustix::param::page_size();
    let mapped = view.len().div_ceil(page) * page;
    let mapped = mapped.min(memfd_len as usize);
    // SAFETY: the view maps whole pages from the start of the memfd, which is at least `mapped`
    // bytes long (so no page read here lies past its end), and lives as long as `view`. The block
    // never left this process and no other view of it is written meanwhile, so the bytes do not
    // change under the slice.
    let bytes = unsafe { std::slice::from_raw_parts(view.as_ptr(), mapped) };
    bytes.to_vec()
}

fn all(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|b| *b == value)
}

/// Where the first byte other than `value` is, for failure messages.
fn first_not(bytes: &[u8], value: u8) -> Option<(usize, u8)> {
    bytes.iter().copied().enumerate().find(|(_, b)| *b != value)
}

fn handle(raw: u32) -> Handle {
    Handle::from_raw(raw).expect("a handle is never 0")
}

/// The test's private broker world, with pooled blocks kept for a minute before they count as
/// idle (set before this process's first shalloc call, and inherited by the children it forks):
/// a slow or loaded machine must not turn an expected reuse into a fresh block.
fn test_env() -> TestEnv {
    let env = TestEnv::new();
    support::keep_pool_warm();
    env
}

/// Locks `h` in our table just long enough to learn its block's inode.
fn inode_of(h: Handle, me: Pid) -> u64 {
    view_inode(&lock(h, me).unwrap())
}

/// One cycle in our own table: alloc `data`, lock, check, unlock, free. Returns the block's inode.
fn cycle(data: &[u8], me: Pid) -> u64 {
    let h = alloc(data, me).unwrap();
    let view = lock(h, me).unwrap();
    assert_eq!(
        view.to_vec(),
        data,
        "a block shows other bytes than were put in"
    );
    let ino = view_inode(&view);
    drop(view);
    free(h, me).unwrap();
    ino
}

fn send_u64(end: &mut End, v: u64) {
    support::send_u64s(end.w.as_mut().expect("write end open"), &[v]);
}

fn recv_u64(end: &mut End) -> u64 {
    support::recv_u64s(&mut end.r, 1)[0]
}

// ---------------------------------------------------------------------------------------------
// 1. What a recycled block shows
// ---------------------------------------------------------------------------------------------

/// Checks the block of `h` (a recycled one, inode `ino`, `size` bytes of `value`): the only block
/// memfd held here, `class` bytes long; the view shows `value`, then zeros to the end of its
/// pages; the descriptor shows `value`, then zeros to the end of the memfd.
fn check_refilled(h: Handle, me: Pid, ino: u64, (size, value): (usize, u8), class: u64) {
    let memfd = only_block();
    assert_eq!(memfd.ino, ino, "the block was not recycled (another inode)");
    assert_eq!(
        memfd.len, class,
        "a recycled memfd keeps its class's length"
    );
    let through_fd = memfd.read(0, class as usize);
    assert!(
        all(&through_fd[..size], value),
        "the new bytes through the descriptor: first wrong {:?}",
        first_not(&through_fd[..size], value)
    );
    assert!(
        all(&through_fd[size..], 0),
        "past the new bytes the descriptor shows old ones: first at {:?}",
        first_not(&through_fd[size..], 0).map(|(i, b)| (i + size, b))
    );
    let view = lock(h, me).unwrap();
    assert_eq!(view.len(), size, "a recycled block's size is the new one");
    assert!(all(&view.to_vec(), value), "the new bytes through the view");
    let pages = mapped_bytes(&view, memfd.len);
    assert!(
        all(&pages[size..], 0),
        "the rest of the view's last page shows old bytes: first at {:?} (mapped {} bytes)",
        first_not(&pages[size..], 0).map(|(i, b)| (i + size, b)),
        pages.len()
    );
}

#[test]
fn a_recycled_block_shows_zeros_past_its_data_through_a_view_and_through_its_descriptor() {
    let _env = test_env();
    let me = support::start_with_empty_pool();

    // 12000 bytes of 0xAB, then 9000 bytes of 0x11: both of the 12 KiB class.
    let old = cycle(&[0xAB; 12_000], me);
    assert_eq!(
        pooled(),
        (1, 12_288),
        "the block came back, its 3 pages written"
    );
    assert_eq!(block_inodes(), HashSet::from([old]));
    let h = alloc(&[0x11; 9_000], me).unwrap();
    assert_eq!(pooled(), (0, 0), "the allocation took the pooled block");
    check_refilled(h, me, old, (9_000, 0x11), 12_288);
    free(h, me).unwrap();
    assert_eq!(pooled().0, 1);

    // A small block after a full page: 4000 bytes of 0xFF, then 64 bytes (both the 4 KiB class).
    trim();
    let old = cycle(&[0xFF; 4_000], me);
    let h = alloc(&[0x22; 64], me).unwrap();
    check_refilled(h, me, old, (64, 0x22), 4_096);
    free(h, me).unwrap();

    // A smaller block inside one class of several steps (80 KiB: 65537..=81920 bytes): the pages
    // past the new block's last page are given back (holes), and read as zero.
    trim();
    let old = cycle(&[0xCD; 81_920], me);
    assert_eq!(pooled(), (1, 81_920));
    let h = alloc(&[0x33; 65_537], me).unwrap();
    {
        // Before any view reads the tail (a read fault on a hole may allocate a page).
        let memfd = only_block();
        assert_eq!(memfd.ino, old, "the 80 KiB block was not recycled");
        assert!(
            !memfd.has_data_from(69_632),
            "the pages past the new block's last page were not punched out"
        );
        assert!(memfd.has_data_from(0), "the new bytes are data");
    }
    check_refilled(h, me, old, (65_537, 0x33), 81_920);
    free(h, me).unwrap();

    // alloc_zeroed after a dirty block of its class: all zero.
    trim();
    let old = cycle(&[0xEE; 8_000], me);
    let h = alloc_zeroed(5_000, me).unwrap();
    check_refilled(h, me, old, (5_000, 0), 8_192);
    free(h, me).unwrap();

    // alloc_with after a dirty block of its class: the fill function is promised zeros.
    trim();
    let old = cycle(&[0xEE; 8_000], me);
    let mut seen = None;
    let h = alloc_with(6_000, me, |buf| {
        seen = Some((buf.len(), first_not(buf, 0)));
        buf.fill(0x44);
    })
    .unwrap();
    assert_eq!(
        seen,
        Some((6_000, None)),
        "the fill function saw (its length, the first non-zero byte)"
    );
    check_refilled(h, me, old, (6_000, 0x44), 8_192);
    free(h, me).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. A view keeps its block out of the pool
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_still_mapped_here_is_not_reused_until_its_view_goes() {
    let _env = test_env();
    let me = support::start_with_empty_pool();

    let first = alloc(&[0x61; 5_000], me).unwrap(); // the 8 KiB class
    let old_view = lock(first, me).unwrap();
    let old = view_inode(&old_view);
    free(first, me).unwrap();
    assert_eq!(
        pooled(),
        (0, 0),
        "a block still mapped here went to the pool"
    );

    let second = alloc(&[0x62; 5_000], me).unwrap();
    let new_view = lock(second, me).unwrap();
    let new = view_inode(&new_view);
    assert_ne!(new, old, "a block still mapped here was reused");
    // The old view writes its own block, not the new one.
    old_view.write_at(0, &[0x63; 5_000]).unwrap();
    assert!(all(&new_view.to_vec(), 0x62), "the new block changed");
    assert!(all(&block_with_inode(new, false).read(0, 5_000), 0x62));
    drop(new_view);

    // The view goes: now the block comes back, and is the next one of its class.
    drop(old_view);
    assert_eq!(
        pooled(),
        (1, 8_192),
        "the block did not come back with its last view"
    );
    let third = alloc(&[0x64; 4_097], me).unwrap();
    assert_eq!(
        inode_of(third, me),
        old,
        "the block that came back was not reused"
    );
    let memfd = block_with_inode(old, false);
    let bytes = memfd.read(0, 8_192);
    assert!(all(&bytes[..4_097], 0x64));
    assert!(
        all(&bytes[4_097..], 0),
        "the old view's writes show past the new bytes"
    );
    free(third, me).unwrap();
    free(second, me).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Reopened by the broker for another process
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_another_process_locked_through_our_table_is_never_reused() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const SIZE: usize = 8_000; // the 8 KiB class

    // The child is forked before the block exists: only the broker's reopening can taint it.
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        let h = handle(end.recv());
        // Our pid is not the owner's: this lock goes through the broker, which reopens the block
        // from the parent's descriptor.
        let view = lock(h, me).unwrap();
        assert!(all(&view.to_vec(), 0x33), "the child saw other bytes");
        end.send(HOLDING);
        assert_eq!(end.recv(), FREED);
        drop(view);
        end.send(UNLOCKED);
        end.wait_closed();
        0
    });

    let h = alloc(&[0x33; SIZE], me).unwrap();
    let reopened = inode_of(h, me);
    end.send(h.as_raw());
    assert_eq!(end.recv(), HOLDING);
    free(h, me).unwrap();
    assert_eq!(
        pooled(),
        (0, 0),
        "a block another process locked went to the pool"
    );
    end.send(FREED);
    assert_eq!(end.recv(), UNLOCKED);
    assert_eq!(pooled(), (0, 0));

    // Blocks of that class now: never the one the broker reopened; and since each of them only ever was locked
    // here, they are recycled among themselves (all one inode from the first on).
    let inodes: Vec<u64> = (0..6u8).map(|i| cycle(&[i; SIZE], me)).collect();
    assert!(
        !inodes.contains(&reopened),
        "the block another process locked was reused: {inodes:?}, that one {reopened}"
    );
    assert!(
        inodes.iter().all(|&i| i == inodes[0]),
        "a block only this process locked was not reused: {inodes:?}"
    );
    assert_eq!(pooled(), (1, 8_192));
    end.close();
    child.expect_success();
}

// ---------------------------------------------------------------------------------------------
// 4. Alive at a fork
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_alive_at_a_fork_is_never_reused() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const SIZE: usize = 8_000;

    let h = alloc(&[0x44; SIZE], me).unwrap();
    let view = lock(h, me).unwrap();
    let before = view_inode(&view);
    let addr = view.as_ptr() as usize;
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        // fork copied the parent's mapping of the block: this child can read (and write) it
        // whatever the parent does with its handle and view.
        assert_eq!(end.recv(), DONE);
        // SAFETY: the mapping of SIZE bytes at `addr` was inherited from the parent and nothing
        // in this child unmaps it; the parent no longer writes the block.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, SIZE) };
        assert!(
            all(bytes, 0x44),
            "the block the child inherited was refilled: first wrong {:?}",
            first_not(bytes, 0x44)
        );
        0
    });

    drop(view);
    free(h, me).unwrap();
    assert_eq!(pooled(), (0, 0), "a block alive at a fork went to the pool");
    // Blocks made after the fork are recycled as usual.
    let after = cycle(&[0x5E; SIZE], me);
    assert_ne!(after, before, "a block alive at a fork was reused");
    assert_eq!(
        pooled(),
        (1, 8_192),
        "a block made after the fork did not come back"
    );
    let again = cycle(&[0x5F; SIZE], me);
    assert_eq!(again, after, "a block made after the fork was not reused");
    end.send(DONE);
    child.expect_success();
}

// ---------------------------------------------------------------------------------------------
// 5. Sent to another table
// ---------------------------------------------------------------------------------------------

/// Test 5's sizes and bytes. Exactly a class: whatever length a block sent away is made, its class
/// is this.
const SENT_SIZE: usize = 8_192;
/// What P puts into its own table: no other process may ever see it.
const SECRET: u8 = 0x5E;
/// What P puts into a receiver's table later: that receiver may see it anywhere it held before.
const LATER: u8 = 0x7A;

/// A process P sends blocks to (test 5). With `attach_first` it uses its own table before the
/// first block comes (so P's blocks come over a channel), else not (so the first comes through
/// the broker). It keeps a duplicate descriptor of the first block's memfd, as any holder of a
/// block may, and frees its handle; then takes the blocks P sends later (`LATER` bytes, any size)
/// one at a time until P sends 0, telling P each one's inode; then gives `check` what its
/// duplicate shows.
fn receiver(mut end: End, attach_first: bool, first: u8, check: impl FnOnce(&[u8])) -> i32 {
    let me = Pid::current();
    if attach_first {
        cycle(b"attach our table", me);
        end.send(ATTACHED);
    }
    let h = handle(end.recv());
    let view = lock(h, me).unwrap();
    assert!(all(&view.to_vec(), first), "the receiver saw other bytes");
    let ino = view_inode(&view);
    // Our table holds the block's descriptor once it has taken the block in (should the broker
    // have answered the lock first, the next call on our table takes it in).
    common::wait_until(procs::LIMIT, || {
        drop(lock(h, me).unwrap());
        block_inodes().contains(&ino)
    });
    // Opened again read/write from our own descriptor: a second open of the memfd that nothing
    // of shalloc knows about.
    let dup = block_with_inode(ino, true);
    assert_eq!(dup.len, SENT_SIZE as u64);
    send_u64(&mut end, ino);
    drop(view);
    free(h, me).unwrap();
    end.send(FREED);
    loop {
        let raw = end.recv();
        if raw == 0 {
            break;
        }
        let view = lock(handle(raw), me).unwrap();
        assert!(all(&view.to_vec(), LATER), "the receiver saw other bytes");
        send_u64(&mut end, view_inode(&view));
        drop(view);
        free(handle(raw), me).unwrap();
    }
    check(&dup.read(0, SENT_SIZE));
    0
}

/// Puts a block of `LATER` bytes into `to`'s table and returns the inode its receiver reports.
fn send_later(end: &mut End, to: Pid, size: usize) -> u64 {
    let h = alloc(&vec![LATER; size], to).unwrap();
    end.send(h.as_raw());
    recv_u64(end)
}

#[test]
fn a_block_sent_to_another_table_is_never_reused_for_another_and_a_kept_duplicate_sees_nothing_else()
 {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const ROUNDS: usize = 30;

    // Q gets a block through the broker (its table is not attached yet); such a block never comes
    // back, even for Q.
    let (mut q, mut to_q) = fork_with_channel(|end| {
        receiver(end, false, 0x77, |dup| {
            assert!(
                all(dup, 0x77),
                "Q's duplicate of a block sent through the broker changed: first wrong {:?}",
                first_not(dup, 0x77)
            );
        })
    });
    // L gets a block over a channel (mapped from our table): it comes back when L is done, to be
    // reused for L's table only. Its duplicate may show what we put into L's table later, never
    // anything else.
    let (mut l, mut to_l) = fork_with_channel(|end| {
        receiver(end, true, 0x78, |dup| {
            assert!(
                !dup.contains(&SECRET),
                "L's duplicate shows bytes we put into our own table"
            );
            assert!(
                dup.iter().all(|b| [0x78, LATER].contains(b)),
                "L's duplicate shows bytes that were never L's"
            );
        })
    });

    let to_q_handle = alloc(&[0x77; SENT_SIZE], q.pid()).unwrap();
    assert_eq!(
        pooled(),
        (0, 0),
        "a block sent to another table went to the pool"
    );
    to_q.send(to_q_handle.as_raw());
    let sent = recv_u64(&mut to_q);
    assert_eq!(to_q.recv(), FREED);

    assert_eq!(to_l.recv(), ATTACHED);
    let ours = alloc(&[0x78; SENT_SIZE], me).unwrap();
    let lent = inode_of(ours, me);
    let in_l = map_handle(ours, me, l.pid()).unwrap();
    free(ours, me).unwrap();
    assert_eq!(
        pooled(),
        (0, 0),
        "a block mapped into another table went to the pool while that table holds it"
    );
    to_l.send(in_l.as_raw());
    assert_eq!(recv_u64(&mut to_l), lent, "L holds another block");
    assert_eq!(to_l.recv(), FREED);
    // L has given it back over the channel; our next block for L (of another class) takes the
    // return in. Then the lent block waits in our pool, for L only.
    send_later(&mut to_l, l.pid(), 100);
    assert!(
        block_inodes().contains(&lent),
        "the block lent to L did not come back (did it go over a channel?)"
    );
    assert!(
        !block_inodes().contains(&sent),
        "the block sent through the broker came back"
    );

    // Many blocks of secret bytes of that class in our own table: none may land in a memfd Q or
    // L held; and they are recycled among themselves (all one inode).
    let mut own = HashSet::new();
    for _ in 0..200 {
        let h = alloc(&[SECRET; SENT_SIZE], me).unwrap();
        own.insert(inode_of(h, me));
        free(h, me).unwrap();
    }
    assert!(
        !own.contains(&sent) && !own.contains(&lent),
        "a block Q or L held was reused for our own table: {own:?}, sent {sent}, lent {lent}"
    );
    assert_eq!(
        own.len(),
        1,
        "our own blocks of one class were not recycled"
    );

    // Blocks into Q's table: neither the block that went to Q through the broker nor the one L
    // held; while blocks do come back (Q sees a memfd it had before).
    let into_q: Vec<u64> = (0..ROUNDS)
        .map(|_| send_later(&mut to_q, q.pid(), SENT_SIZE))
        .collect();
    assert!(
        !into_q.contains(&sent) && !into_q.contains(&lent),
        "a block sent through the broker, or lent to L, went to Q: {into_q:?}, sent {sent}, \
         lent {lent}"
    );
    let distinct: HashSet<u64> = into_q.iter().copied().collect();
    assert!(
        distinct.len() < ROUNDS,
        "no block into Q's table was ever reused: {into_q:?}"
    );
    assert!(
        block_inodes().contains(&lent),
        "the block lent to L left the pool"
    );

    // The positive control for L: the block it gave back is what its next block of that class is.
    assert_eq!(
        send_later(&mut to_l, l.pid(), SENT_SIZE),
        lent,
        "the block L gave back was not reused for L"
    );

    to_q.send(0);
    to_l.send(0);
    q.expect_success();
    l.expect_success();
}

// ---------------------------------------------------------------------------------------------
// 6. Bounds and trim
// ---------------------------------------------------------------------------------------------

#[test]
fn the_pool_is_bounded_and_trim_gives_everything_back() {
    let _env = test_env();
    let me = support::start_with_empty_pool();

    let handles: Vec<Handle> = (0..40u8).map(|i| alloc(&[i; 3_000], me).unwrap()).collect();
    let inodes: Vec<u64> = handles.iter().map(|&h| inode_of(h, me)).collect();
    assert_eq!(block_inodes().len(), 40);
    for &h in &handles {
        free(h, me).unwrap();
    }
    assert_eq!(
        pooled(),
        (32, 32 * 4_096),
        "the pool keeps at most 32 blocks"
    );
    assert_eq!(
        block_inodes(),
        inodes[..32].iter().copied().collect(),
        "the pool keeps the first 32 blocks that came back, and closes the others"
    );
    assert_eq!(trim(), 32);
    assert_eq!(pooled(), (0, 0));
    assert_eq!(support::memfd_fds("self"), 0, "trim left a memfd open");
    assert!(block_inodes().is_empty());

    // Recycling goes on after a trim, with new memfds.
    let a = cycle(&[1; 3_000], me);
    let b = cycle(&[2; 3_000], me);
    assert_eq!(a, b, "no recycling after a trim");
    assert!(!inodes.contains(&a));
    assert_eq!(trim(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7–9. Settings from the environment
// ---------------------------------------------------------------------------------------------

/// Forks a child that sets `key=value` before its first shalloc call (the pool reads its settings
/// once, at its first use), then runs `f`.
fn child_with_env(key: &'static str, value: &'static str, f: impl FnOnce(Pid)) -> Child {
    Child::fork(move || {
        // The child has one thread: nothing reads the environment concurrently.
        support::set_env(key, value);
        f(Pid::current());
        0
    })
}

#[test]
fn a_pool_off_by_environment_keeps_nothing() {
    let _env = test_env();
    let mut child = child_with_env(POOL_BYTES_ENV, "0", |me| {
        let mut inodes = HashSet::new();
        for i in 0..5u8 {
            let h = alloc(&[i; 100], me).unwrap();
            let view = lock(h, me).unwrap();
            let ino = view_inode(&view);
            let memfd = only_block();
            assert_eq!(memfd.ino, ino);
            assert_eq!(
                memfd.len, 100,
                "with recycling off a memfd is exactly its size"
            );
            drop(memfd);
            drop(view);
            free(h, me).unwrap();
            assert_eq!(pooled(), (0, 0), "with recycling off a block was pooled");
            assert!(
                block_inodes().is_empty(),
                "a freed block's memfd is still open"
            );
            assert!(inodes.insert(ino), "a memfd was reused");
        }
        let h = alloc_zeroed(100, me).unwrap();
        assert_eq!(only_block().len, 100);
        free(h, me).unwrap();
        let h = alloc_with(100, me, |b| b.fill(1)).unwrap();
        assert_eq!(only_block().len, 100);
        free(h, me).unwrap();
        assert_eq!(pooled(), (0, 0));
    });
    child.expect_success();

    // The control, in this process with the default settings: the same cycle makes a memfd a
    // class long, which comes back and is reused.
    let me = support::start_with_empty_pool();
    let h = alloc(&[9; 100], me).unwrap();
    let memfd = only_block();
    assert_eq!(memfd.len, 4_096);
    drop(memfd);
    let first = inode_of(h, me);
    free(h, me).unwrap();
    assert_eq!(pooled(), (1, 4_096));
    assert_eq!(cycle(&[10; 100], me), first);
}

#[test]
fn an_idle_pool_gives_its_blocks_back_on_the_next_call() {
    let _env = test_env();
    let mut child = child_with_env(POOL_IDLE_ENV, "50", |me| {
        let first = cycle(&[0x1D; 100], me); // the 4 KiB class
        assert_eq!(pooled(), (1, 4_096));
        assert!(block_inodes().contains(&first));
        // No thread of ours runs in the background: the block goes when a call touches the pool
        // at least 50 ms after it came back. An allocation of another class touches it without
        // taking the block.
        common::wait_until(procs::LIMIT, || {
            let h = alloc(&[0x2E; 5_000], me).unwrap(); // the 8 KiB class
            free(h, me).unwrap();
            !block_inodes().contains(&first)
        });
        assert!(pooled().0 >= 1, "the 8 KiB block came back");
    });
    child.expect_success();

    // The control, in this process (idle time 60 s, see `test_env`): the same wait and the same
    // call of another class leave the block in place — it is the idle time that gave the child's
    // block back, not the other class's allocation.
    let me = support::start_with_empty_pool();
    let young = cycle(&[0x1D; 100], me);
    std::thread::sleep(Duration::from_millis(100));
    let h = alloc(&[0x2E; 5_000], me).unwrap();
    free(h, me).unwrap();
    assert!(
        block_inodes().contains(&young),
        "a block idle for 100 ms went with an idle time of 60 s"
    );
    assert_eq!(pooled(), (2, 4_096 + 8_192));
}

#[test]
fn a_full_pool_lets_the_newcomer_go_and_keeps_what_it_holds() {
    let _env = test_env();
    // Room for three pages of written bytes.
    let mut child = child_with_env(POOL_BYTES_ENV, "12288", |me| {
        let handles: Vec<Handle> = (0..3u8).map(|i| alloc(&[i; 100], me).unwrap()).collect();
        let small: Vec<u64> = handles.iter().map(|&h| inode_of(h, me)).collect();
        for &h in &handles {
            free(h, me).unwrap();
        }
        assert_eq!(pooled(), (3, 12_288));
        let kept: HashSet<u64> = small.iter().copied().collect();
        // A block with two written pages comes back to the full pool: it goes, the three stay
        // (a pool that put out its oldest would miss every time on a cycle of more than fit).
        let two_pages = cycle(&[7; 5_000], me);
        assert_eq!(pooled(), (3, 12_288));
        assert!(!block_inodes().contains(&two_pages));
        assert_eq!(block_inodes(), kept);
        // Taking one out makes room: the next block of its class reuses it and comes back.
        let again = cycle(&[9; 100], me);
        assert!(kept.contains(&again), "a pooled one-page block is reused");
        assert_eq!(pooled(), (3, 12_288));
        // A block with more written bytes than the cap is never kept, and evicts nothing.
        let big = cycle(&[8; 20_000], me);
        assert_eq!(pooled(), (3, 12_288));
        assert!(!block_inodes().contains(&big));
        assert_eq!(block_inodes(), kept);
    });
    child.expect_success();
}
