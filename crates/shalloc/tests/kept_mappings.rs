//! Kept mappings: a recycled block keeps a read/write mapping of its whole memfd, and a process
//! that gave a lent block back keeps its mapping of it for the block's return. Checked on the
//! mappings themselves (`/proc/self/maps`: where a view starts, how long it is, its protection and
//! inode), on the memfds (`/proc/self/fd`: which inode a block has, its bytes through the
//! descriptor), and with `msync` (whether an address range is mapped at all).
//!
//! 1. Own table: a recycled block is refilled through its kept mapping and a view shows that
//!    mapping — the same address each time — with exactly the new bytes and zeros past them (a
//!    shrink within a class zeroes through the mapping; `alloc_with` fills in place and sees
//!    zeros; `alloc_zeroed` is all zero). A size of fewer pages than the memfd gets a fresh
//!    mapping of exactly its pages, which goes at the view's end; the kept one goes with `trim`.
//! 2. Two live views of one block are two mappings of the same bytes; either may go first.
//! 3. A read-only view never shows the read/write kept mapping: writing through it faults,
//!    whichever view came first (checked in forked children).
//! 4. Lent blocks (process A put them into our table over its channel): after we free one, we keep
//!    its mapping and descriptor; when A lends the same memfd again, our view shows it at the same
//!    address with the new bytes, and zeros past them, although we scribbled over the memfd; a
//!    size of another page count gets a new mapping. A kept mapping of one protection is never
//!    shown by a view of the other.
//! 5. What we kept of lent blocks counts in `pool::pooled()` and goes with `trim`,
//!    `set_limit(Some(0))`, A's exit (on our next call) and the idle time (on the next return).
//! 6. A forked child drops every kept mapping it inherits (it cannot read later blocks through
//!    them); a block held at a fork is never reused.
//!
//! Every test process keeps pooled blocks for a minute (`test_env`) so a loaded machine cannot
//! turn an expected reuse into a fresh block — but for the idle test, which sets its own. Process
//! A of the hand-off tests is a forked child ("the maker") that obeys commands over pipes; the test
//! process is the receiver, B. Memfd inodes are not handed out again while a test runs, so the same
//! inode means the same memfd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestEnv;
use procs::{Child, End, fork_with_channel};
use shalloc::pool::{POOL_IDLE_ENV, pooled, set_limit, trim};
use shalloc::{
    Handle, Pid, View, alloc, alloc_with, alloc_zeroed, free, lock, lock_read_only, map_handle,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What `/proc/self/fd/N` reads for a block's memfd (`memfd_create("shalloc")`).
const BLOCK_LINK: &str = "/memfd:shalloc (deleted)";

/// How a shared read/write and a shared read-only mapping show in `/proc/self/maps`.
const RW: &str = "rw-s";
const RO: &str = "r--s";

/// The byte a receiver scribbles over a lent memfd before freeing it.
const JUNK: u8 = 0xa5;

fn page() -> usize {
    rustix::param::page_size()
}

/// `len` rounded up to whole pages.
fn pages(len: usize) -> usize {
    len.div_ceil(page()) * page()
}

fn handle(raw: u64) -> Handle {
    Handle::from_raw(u32::try_from(raw).unwrap()).expect("a handle is never 0")
}

/// The bytes of block `seed`: its seed first, then bytes that are never zero.
fn pattern(seed: u64, size: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..size as u64)
        .map(|i| {
            ((i.wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(0x9e37_79b9))
                >> 11) as u8)
                | 1
        })
        .collect();
    let head = seed.to_le_bytes();
    let n = head.len().min(bytes.len());
    bytes[..n].copy_from_slice(&head[..n]);
    bytes
}

/// Where `got` first differs from `want`, for failure messages.
fn first_diff(got: &[u8], want: &[u8]) -> Option<(usize, u8, u8)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| (i, *g, *w))
}

fn first_nonzero(bytes: &[u8]) -> Option<(usize, u8)> {
    bytes.iter().copied().enumerate().find(|(_, b)| *b != 0)
}

/// A block's memfd as this process holds it, opened again through `/proc/self/fd`.
struct Memfd {
    file: File,
    /// The memfd's length (`st_size`): the block's size, or its class.
    len: u64,
}

impl Memfd {
    /// `len` bytes from `offset`, read through the descriptor (`pread`), not through a mapping.
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// The block memfds this process has open: (path, inode), one per descriptor. Listed before
/// anything is opened, so our own opens never show up.
fn block_fds() -> Vec<(PathBuf, u64)> {
    let entries: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    entries
        .into_iter()
        .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.as_os_str() == BLOCK_LINK))
        .filter_map(|p| {
            let ino = std::fs::metadata(&p).ok()?.ino();
            Some((p, ino))
        })
        .collect()
}

/// The inodes of the block memfds this process has open.
fn block_inodes() -> HashSet<u64> {
    block_fds().into_iter().map(|(_, ino)| ino).collect()
}

/// The block memfd with inode `ino` that this process holds (for writing too when `write`).
fn open_block(ino: u64, write: bool) -> Memfd {
    let (path, _) = block_fds()
        .into_iter()
        .find(|(_, i)| *i == ino)
        .unwrap_or_else(|| {
            panic!(
                "no block memfd with inode {ino} is open here: {:?}",
                support::fd_targets("self")
            )
        });
    let file = File::options()
        .read(true)
        .write(write)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().unwrap().len();
    Memfd { file, len }
}

/// A mapping as `/proc/self/maps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapped {
    len: usize,
    perms: String,
    ino: u64,
}

/// The mapping that starts at `addr`, if one does.
fn mapping_at(addr: usize) -> Option<Mapped> {
    support::maps("self").iter().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        if start != addr {
            return None;
        }
        let end = usize::from_str_radix(end, 16).ok()?;
        let perms = fields.next()?.to_owned();
        let ino = fields.nth(2)?.parse().ok()?;
        Some(Mapped {
            len: end - start,
            perms,
            ino,
        })
    })
}

/// Fails unless a mapping of the memfd with inode `ino`, `len` bytes long with protection `perms`,
/// starts at `addr`.
fn assert_mapping(addr: usize, ino: u64, len: usize, perms: &str, what: &str) {
    let want = Mapped {
        len,
        perms: perms.to_owned(),
        ino,
    };
    assert_eq!(
        mapping_at(addr),
        Some(want),
        "{what}: the mapping at {addr:#x} (inode {ino})"
    );
}

/// Whether no mapping of the memfd with inode `ino` starts at `addr` (whatever else may).
fn unmapped_there(addr: usize, ino: u64) -> bool {
    mapping_at(addr).is_none_or(|m| m.ino != ino)
}

/// Whether every page of `[addr, addr + len)` is mapped (`msync` fails with `ENOMEM` otherwise).
fn is_mapped(addr: usize, len: usize) -> bool {
    // SAFETY: msync with MS_ASYNC only looks the range up in the page tables (and schedules
    // write-back of shared file pages); it reads or writes no memory of this process.
    let r = unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_ASYNC) };
    if r == 0 {
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(err.raw_os_error(), Some(libc::ENOMEM), "msync: {err}");
    false
}

/// The test's private broker world; pooled and kept blocks count as idle only after a minute (set
/// before this process's first shalloc call, inherited by the children it forks).
fn test_env() -> TestEnv {
    let env = TestEnv::new();
    support::keep_pool_warm();
    env
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Write,
    ReadOnly,
}

impl Access {
    fn perms(self) -> &'static str {
        match self {
            Access::Write => RW,
            Access::ReadOnly => RO,
        }
    }
}

/// What a view showed: where it starts, the inode of its memfd, and the memfd's length.
#[derive(Debug, Clone, Copy)]
struct Round {
    addr: usize,
    ino: u64,
    memfd_len: u64,
}

/// Fails unless `view` shows exactly `want`, maps exactly its pages with `access`'s protection,
/// shows zeros from the end of `want` to the end of its last page, and its memfd holds zeros from
/// there to its end (read through the descriptor).
fn check_shown(view: &View, want: &[u8], access: Access, what: &str) -> Round {
    let size = want.len();
    assert_eq!(view.len(), size, "{what}: the view's size");
    let got = view.to_vec();
    if let Some((at, g, w)) = first_diff(&got, want) {
        panic!("{what}: the view shows {g:#x} at {at}, expected {w:#x}");
    }
    let addr = view.as_ptr() as usize;
    let map = mapping_at(addr)
        .unwrap_or_else(|| panic!("{what}: no mapping starts at the view's address {addr:#x}"));
    assert_eq!(
        (map.len, map.perms.as_str()),
        (pages(size), access.perms()),
        "{what}: a view maps exactly its block's pages, with its own protection"
    );
    // SAFETY: the view's mapping covers `pages(size)` bytes from its start (just read from
    // /proc/self/maps) and lives as long as `view`; bytes past `size` in the last page are backed
    // (that page holds the block's last byte). No other process writes the block meanwhile.
    let tail = unsafe { std::slice::from_raw_parts(view.as_ptr().add(size), pages(size) - size) };
    if let Some((at, b)) = first_nonzero(tail) {
        panic!(
            "{what}: the view's last page shows {b:#x} at {} past the block's end",
            size + at
        );
    }
    let memfd = open_block(map.ino, false);
    assert!(memfd.len >= pages(size) as u64 || memfd.len == size as u64);
    let past = memfd.read(size as u64, (memfd.len - size as u64) as usize);
    if let Some((at, b)) = first_nonzero(&past) {
        panic!(
            "{what}: the memfd ({} bytes, inode {}) holds {b:#x} at {} past the block's end",
            memfd.len,
            map.ino,
            size + at
        );
    }
    Round {
        addr,
        ino: map.ino,
        memfd_len: memfd.len,
    }
}

/// Locks `h` in our own table and checks it shows `want` (see [`check_shown`]).
fn lock_check(h: Handle, me: Pid, want: &[u8], access: Access, what: &str) -> (View, Round) {
    let view = match access {
        Access::Write => lock(h, me),
        Access::ReadOnly => lock_read_only(h, me),
    }
    .unwrap_or_else(|e| panic!("{what}: lock: {e:?}"));
    let round = check_shown(&view, want, access, what);
    (view, round)
}

/// Forks a child that writes `value` to address `addr` (a view the child inherits) and exits 0:
/// its exit code, 128 + SIGSEGV when the write faulted.
fn write_in_child(addr: usize, value: u8) -> i32 {
    let mut child = Child::fork(move || {
        // No core dump (nor a core handler run) for the expected crash.
        // SAFETY: prctl with these integer arguments changes only this process's dumpable flag.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
        // SAFETY: deliberately unchecked: `addr` is the first byte of a view the parent mapped
        // before the fork (the child inherited it with its protection). A read/write one takes the
        // byte; a read-only one must fault and kill this child before it returns.
        unsafe { std::ptr::write_volatile(addr as *mut u8, value) };
        0
    });
    child.wait()
}

// ---------------------------------------------------------------------------------------------
// The maker: process A of the hand-off tests
// ---------------------------------------------------------------------------------------------

/// Commands to the maker, each followed by its arguments (all `u64`).
const MAKE: u64 = 1; // seed, size, with (alloc_with when 1) → handle in B's table
const EXIT: u64 = 2;

/// Process A: puts blocks into B's table (`alloc(data, b)`, straight over their channel) as told.
fn maker(mut end: End, b: Pid) -> i32 {
    // Its own settings, should the parent not have read its own yet: a block given back is kept
    // for a minute.
    support::set_env(POOL_IDLE_ENV, "60000");
    loop {
        match support::recv_u64s(&mut end.r, 1)[0] {
            MAKE => {
                let a = support::recv_u64s(&mut end.r, 3);
                let (seed, size, with) = (a[0], usize::try_from(a[1]).unwrap(), a[2] == 1);
                let data = pattern(seed, size);
                let h = if with {
                    alloc_with(size, b, |buf| {
                        assert_eq!(
                            first_nonzero(buf),
                            None,
                            "maker: alloc_with's fill saw old bytes"
                        );
                        buf.copy_from_slice(&data);
                    })
                } else {
                    alloc(&data, b)
                }
                .unwrap_or_else(|e| panic!("maker: block {seed} into {b}: {e:?}"));
                let w = end.w.as_mut().expect("write end open");
                support::send_u64s(w, &[u64::from(h.as_raw())]);
            }
            EXIT => return 0,
            other => panic!("maker: unknown command {other}"),
        }
    }
}

/// Process A, as B (the test process) sees it.
struct Maker {
    child: Child,
    end: End,
}

impl Maker {
    /// Has A put block `seed` of `size` bytes into our table (with `alloc_with` when `with`).
    fn make(&mut self, seed: u64, size: usize, with: bool) -> Handle {
        let w = self.end.w.as_mut().expect("write end open");
        support::send_u64s(w, &[MAKE, seed, size as u64, u64::from(with)]);
        handle(support::recv_u64s(&mut self.end.r, 1)[0])
    }

    /// Has A exit, and reaps it (our ends of the pipes stay open until the `Maker` goes).
    fn exit(&mut self) {
        let w = self.end.w.as_mut().expect("write end open");
        support::send_u64s(w, &[EXIT]);
        self.child.expect_success();
    }
}

/// Starts the broker, forks A (before any block exists here), and attaches our table (so A's
/// blocks come straight over a channel). Nothing of ours is pooled afterwards. Returns A and our
/// pid.
fn handoff_start() -> (Maker, Pid) {
    shalloc::broker_pid().unwrap();
    let me = Pid::current();
    let (child, end) = fork_with_channel(move |end| maker(end, me));
    free(alloc(b"attach our table", me).unwrap(), me).unwrap();
    trim();
    assert_eq!(pooled(), (0, 0));
    (Maker { child, end }, me)
}

/// One hand-off: A puts block `seed` (`size` bytes) into our table; we lock it with `access`,
/// check it (see [`check_shown`]), run `during` on the live view, drop the view and free the
/// handle — which gives the block back to A. With `expect_kept`, checks that we kept a mapping of
/// the memfd and its descriptor.
fn receive(
    a: &mut Maker,
    me: Pid,
    (seed, size, with): (u64, usize, bool),
    access: Access,
    expect_kept: bool,
    during: impl FnOnce(&View, &Round),
) -> Round {
    let what = format!("block {seed} ({size} bytes)");
    let h = a.make(seed, size, with);
    let (view, round) = lock_check(h, me, &pattern(seed, size), access, &what);
    during(&view, &round);
    drop(view);
    free(h, me).unwrap();
    if expect_kept {
        assert!(
            support::maps_inode(round.ino) && block_inodes().contains(&round.ino),
            "{what}: nothing kept of memfd {} after it went back: {:?}",
            round.ino,
            support::memfd_maps("self")
        );
    }
    round
}

/// What a receiver may do to a lent block: write junk past its size in the view's last page, and
/// over the whole memfd through its descriptor.
fn scribble(view: &View, round: &Round) {
    let size = view.len();
    // SAFETY: the view is read/write and maps `pages(size)` bytes (checked by `check_shown`);
    // this process alone uses the block while it holds it.
    unsafe {
        std::ptr::write_bytes(view.as_ptr().cast_mut().add(size), JUNK, pages(size) - size);
    }
    let memfd = open_block(round.ino, true);
    memfd
        .file
        .write_all_at(&vec![JUNK; memfd.len as usize], 0)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. Own table: refilled and shown through the kept mapping
// ---------------------------------------------------------------------------------------------

// Fails if a view's drop or the pool unmaps the kept mapping, or refill leaves bytes past the size.
#[test]
fn a_recycled_own_block_is_refilled_and_shown_through_its_kept_mapping() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const C12: usize = 12 << 10; // an exact class: three pages

    let data = pattern(1, C12);
    let h = alloc(&data, me).unwrap();
    let (view, first) = lock_check(h, me, &data, Access::Write, "first block");
    let (kept, ino) = (first.addr, first.ino);
    assert_eq!(first.memfd_len, C12 as u64);
    drop(view);
    assert_mapping(
        kept,
        ino,
        C12,
        RW,
        "after the view dropped (given back, not unmapped)",
    );
    free(h, me).unwrap();
    assert_eq!(pooled(), (1, C12 as u64));
    assert_mapping(kept, ino, C12, RW, "in the pool");

    // The same size, new bytes: refilled through the mapping, shown by it.
    for seed in 2..5 {
        let data = pattern(seed, C12);
        let h = alloc(&data, me).unwrap();
        assert_eq!(
            pooled(),
            (0, 0),
            "block {seed} did not take the pooled block"
        );
        let what = format!("block {seed}");
        let (view, r) = lock_check(h, me, &data, Access::Write, &what);
        assert_eq!(r.ino, ino, "{what}: not recycled");
        assert_eq!(
            r.addr, kept,
            "{what}: not shown through the block's kept mapping"
        );
        drop(view);
        free(h, me).unwrap();
    }

    // Shrinking within the class (still three pages): the old bytes past 9000 are zeroed, seen
    // through the descriptor before any view, then through the view.
    let data = pattern(5, 9_000);
    let h = alloc(&data, me).unwrap();
    let memfd = open_block(ino, false);
    assert_eq!(
        memfd.read(0, 9_000),
        data,
        "9000 bytes through the descriptor"
    );
    assert_eq!(
        first_nonzero(&memfd.read(9_000, C12 - 9_000)),
        None,
        "past 9000 bytes the descriptor shows the old block's bytes"
    );
    drop(memfd);
    let (view, r) = lock_check(h, me, &data, Access::Write, "9000 bytes");
    assert_eq!(
        (r.ino, r.addr),
        (ino, kept),
        "9000 bytes: not the kept mapping"
    );
    drop(view);
    free(h, me).unwrap();

    // alloc_with: the fill function works in the kept mapping, and sees only zeros there.
    let data = pattern(6, 10_000);
    let mut seen = None;
    let h = alloc_with(10_000, me, |buf| {
        seen = Some((buf.len(), first_nonzero(buf), buf.as_ptr() as usize));
        buf.copy_from_slice(&data);
    })
    .unwrap();
    assert_eq!(
        seen,
        Some((10_000, None, kept)),
        "the fill function saw (its length, the first non-zero byte, its address)"
    );
    let (view, r) = lock_check(h, me, &data, Access::Write, "alloc_with");
    assert_eq!(
        (r.ino, r.addr),
        (ino, kept),
        "alloc_with: not the kept mapping"
    );
    drop(view);
    free(h, me).unwrap();

    // alloc_zeroed: all zero.
    let h = alloc_zeroed(11_000, me).unwrap();
    let (view, r) = lock_check(h, me, &[0; 11_000], Access::Write, "alloc_zeroed");
    assert_eq!(
        (r.ino, r.addr),
        (ino, kept),
        "alloc_zeroed: not the kept mapping"
    );
    drop(view);
    free(h, me).unwrap();

    // trim: the kept mapping goes with its block.
    assert_eq!(trim(), 1);
    assert!(
        !support::maps_inode(ino),
        "a trimmed block is still mapped: {:?}",
        support::memfd_maps("self")
    );

    // The 64 KiB class holds blocks of 15 and of 16 pages: a view maps exactly its block's pages,
    // so a 15-page block is never shown through a 16-page kept mapping.
    const C64: usize = 64 << 10;
    let data = pattern(7, 57_345); // 15 pages
    let h = alloc(&data, me).unwrap();
    let (view, r) = lock_check(h, me, &data, Access::Write, "15 pages, fresh");
    let ino = r.ino;
    assert_eq!(r.memfd_len, C64 as u64);
    drop(view);
    assert!(
        !support::maps_inode(ino),
        "a view of other length than its memfd was not unmapped at its end"
    );
    free(h, me).unwrap();
    // Grows to the whole class: refilled through a new kept mapping (copied where the old block
    // had pages, written past them), which the view shows.
    let data = pattern(8, C64);
    let h = alloc(&data, me).unwrap();
    let (view, r) = lock_check(h, me, &data, Access::Write, "16 pages");
    assert_eq!(r.ino, ino, "16 pages: not recycled");
    let kept = r.addr;
    drop(view);
    assert_mapping(kept, ino, C64, RW, "16 pages, after the view");
    free(h, me).unwrap();
    // Shrinks to 15 pages: zeros past it, and a fresh mapping of 15 pages while the kept one
    // stays as it is.
    let data = pattern(9, 60_000);
    let h = alloc(&data, me).unwrap();
    let (view, r) = lock_check(h, me, &data, Access::Write, "15 pages, recycled");
    assert_eq!(r.ino, ino, "15 pages: not recycled");
    assert_ne!(
        r.addr, kept,
        "a 15-page view showed the 16-page kept mapping"
    );
    assert_mapping(
        kept,
        ino,
        C64,
        RW,
        "the kept mapping, while a fresh view lives",
    );
    let fresh = r.addr;
    drop(view);
    assert!(
        unmapped_there(fresh, ino),
        "a fresh view was not unmapped at its end"
    );
    assert_mapping(kept, ino, C64, RW, "the kept mapping, after the fresh view");
    free(h, me).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Two live views of one block
// ---------------------------------------------------------------------------------------------

// Fails if two live views share the kept mapping, or a view's drop does not give it back (unshow).
#[test]
fn two_live_views_of_one_block_are_two_mappings_of_the_same_bytes() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const SIZE: usize = 8_192;
    let mut data = pattern(1, SIZE);
    let h = alloc(&data, me).unwrap();

    let (first, r1) = lock_check(h, me, &data, Access::Write, "first view");
    let (second, r2) = lock_check(h, me, &data, Access::Write, "second view");
    assert_ne!(r1.addr, r2.addr, "two live views share an address");
    assert_eq!(r1.ino, r2.ino);
    let ino = r1.ino;
    first.write_at(100, b"through the first").unwrap();
    data[100..117].copy_from_slice(b"through the first");
    assert_eq!(
        second.to_vec(),
        data,
        "a write through one view is not seen through the other"
    );
    second.write_at(5_000, b"through the second").unwrap();
    data[5_000..5_018].copy_from_slice(b"through the second");
    assert_eq!(
        first.to_vec(),
        data,
        "a write through one view is not seen through the other"
    );

    // The kept mapping's view goes first: the other is intact, and the mapping stays.
    drop(first);
    assert_mapping(r1.addr, ino, SIZE, RW, "the kept mapping after its view");
    assert_eq!(
        second.to_vec(),
        data,
        "the second view changed when the first went"
    );
    // No view shows the kept mapping now: the next one does, while the second still lives.
    let (third, r3) = lock_check(h, me, &data, Access::Write, "third view");
    assert_eq!(
        r3.addr, r1.addr,
        "the kept mapping was not given back by its view"
    );
    // The fresh view goes first: unmapped, the kept one intact.
    drop(second);
    assert!(
        unmapped_there(r2.addr, ino),
        "a fresh view was not unmapped"
    );
    assert_eq!(
        third.to_vec(),
        data,
        "the third view changed when the second went"
    );
    drop(third);

    // Two handles to the block in our own table (map_handle to ourselves): the same.
    let h2 = map_handle(h, me, me).unwrap();
    let (v1, r1) = lock_check(h, me, &data, Access::Write, "view of the first handle");
    let (v2, r2) = lock_check(h2, me, &data, Access::Write, "view of the second handle");
    assert_ne!(r1.addr, r2.addr, "two live views share an address");
    assert_eq!((r1.ino, r2.ino), (ino, ino), "two handles, two blocks");
    v2.write_at(0, b"second handle").unwrap();
    data[..13].copy_from_slice(b"second handle");
    assert_eq!(v1.to_vec(), data);
    drop(v1);
    assert_eq!(
        v2.to_vec(),
        data,
        "one handle's view changed when the other's went"
    );
    drop(v2);
    free(h, me).unwrap();
    assert_eq!(
        pooled(),
        (0, 0),
        "the block came back with a handle still open"
    );
    free(h2, me).unwrap();
    assert_eq!(pooled(), (1, SIZE as u64));
}

// ---------------------------------------------------------------------------------------------
// 3. Read-only views never show the read/write kept mapping
// ---------------------------------------------------------------------------------------------

// Fails if `show` ignores protection: a read-only view gets the r/w kept mapping and writes land.
#[test]
fn a_read_only_view_of_an_own_block_never_shows_its_read_write_kept_mapping() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    const SIZE: usize = 8_192;

    // Read-only first, on a fresh block: a fresh read-only mapping, unmapped at its end (an own
    // block's kept mapping is read/write only).
    let data = pattern(1, SIZE);
    let h = alloc(&data, me).unwrap();
    let (ro, r) = lock_check(h, me, &data, Access::ReadOnly, "read-only first");
    let ino = r.ino;
    drop(ro);
    assert!(
        !support::maps_inode(ino),
        "a read-only view left a mapping behind: {:?}",
        support::memfd_maps("self")
    );
    free(h, me).unwrap();
    // Refilled in place: a read/write kept mapping the fill function writes.
    let data = pattern(2, SIZE);
    let h = alloc_with(SIZE, me, |buf| {
        assert_eq!(first_nonzero(buf), None, "the fill function saw old bytes");
        buf.copy_from_slice(&data);
    })
    .unwrap();
    let (rw, r) = lock_check(h, me, &data, Access::Write, "read/write");
    assert_eq!(r.ino, ino, "not recycled");
    let kept = r.addr;
    drop(rw);
    assert_mapping(kept, ino, SIZE, RW, "the kept mapping");

    // Read-only after read/write: a fresh read-only mapping (checked by lock_check).
    let (ro, r) = lock_check(h, me, &data, Access::ReadOnly, "read-only after read/write");
    assert_ne!(
        r.addr, kept,
        "a read-only view showed the read/write kept mapping"
    );
    // Read/write while the read-only view lives: the kept mapping.
    let (rw, r) = lock_check(h, me, &data, Access::Write, "read/write after read-only");
    assert_eq!(
        r.addr, kept,
        "a read/write view did not show the kept mapping"
    );

    // Through children (after a fork the block is never recycled: this comes last).
    assert_eq!(
        write_in_child(ro.as_ptr() as usize, 0x11),
        128 + libc::SIGSEGV,
        "a write through a read-only view (made after a read/write one) did not fault"
    );
    assert_eq!(ro.to_vec(), data, "the faulting write went through");
    assert_eq!(
        write_in_child(rw.as_ptr() as usize, 0x22),
        0,
        "a write through the read/write view failed"
    );
    assert_eq!(
        ro.to_vec()[0],
        0x22,
        "a child's write through the read/write view is not seen"
    );
    drop(ro);
    drop(rw);
    // One more read-only view now that no view shows the kept mapping: still read-only.
    let mut data = data;
    data[0] = 0x22;
    let (ro, _) = lock_check(
        h,
        me,
        &data,
        Access::ReadOnly,
        "read-only, kept mapping free",
    );
    // (Its protection is checked by lock_check; after the forks the kept mapping may be gone, and a
    // fresh mapping may take its address.)
    assert_eq!(
        write_in_child(ro.as_ptr() as usize, 0x33),
        128 + libc::SIGSEGV,
        "a write through a read-only view did not fault"
    );
    assert_eq!(ro.to_vec(), data, "the faulting write went through");
    drop(ro);
    free(h, me).unwrap();
}

// Fails if a lent block's kept mapping is shown to a view of the other protection.
#[test]
fn a_kept_mapping_of_a_lent_block_is_shown_only_to_a_view_of_its_protection() {
    let _env = test_env();
    let (mut a, me) = handoff_start();
    const SIZE: usize = 20_000; // five pages, an exact class

    let x = receive(
        &mut a,
        me,
        (1, SIZE, false),
        Access::ReadOnly,
        true,
        |_, _| {},
    );
    let y = receive(&mut a, me, (2, SIZE, false), Access::Write, true, |_, _| {});
    assert_ne!(x.ino, y.ino, "block 1's return cannot have been read yet");
    assert_mapping(x.addr, x.ino, pages(SIZE), RO, "kept of block 1");
    assert_mapping(y.addr, y.ino, pages(SIZE), RW, "kept of block 2");

    // X comes back; we kept it read-only: a read/write view must be a fresh, writable mapping.
    receive(
        &mut a,
        me,
        (3, SIZE, false),
        Access::Write,
        true,
        |view, r| {
            assert_eq!(r.ino, x.ino, "block 3 is not block 1's memfd");
            assert_ne!(
                r.addr, x.addr,
                "a read/write view showed a read-only kept mapping"
            );
            assert_mapping(x.addr, x.ino, pages(SIZE), RO, "kept of block 1, not shown");
            view.write_at(0, b"written by B").unwrap();
            let memfd = open_block(r.ino, false);
            assert_eq!(memfd.read(0, 12), b"written by B");
        },
    );
    // Y comes back; we kept it read/write: a read-only view must be a fresh read-only mapping, and
    // a write through it faults (in a child; the fork keeps this block from coming back: last).
    receive(
        &mut a,
        me,
        (4, SIZE, false),
        Access::ReadOnly,
        false,
        |view, r| {
            assert_eq!(r.ino, y.ino, "block 4 is not block 2's memfd");
            assert_ne!(
                r.addr, y.addr,
                "a read-only view showed a read/write kept mapping"
            );
            assert_mapping(y.addr, y.ino, pages(SIZE), RW, "kept of block 2, not shown");
            assert_eq!(
                write_in_child(view.as_ptr() as usize, 0x44),
                128 + libc::SIGSEGV,
                "a write through a read-only view of a lent block did not fault"
            );
            assert_eq!(
                view.to_vec(),
                pattern(4, SIZE),
                "the faulting write went through"
            );
        },
    );
    a.exit();
}

// ---------------------------------------------------------------------------------------------
// 4. Lent blocks: our mapping kept for their return
// ---------------------------------------------------------------------------------------------

// Fails if a given-back block's mapping is not kept, not found again, or found for another memfd.
#[test]
fn a_lent_block_coming_back_is_shown_at_the_address_its_receiver_kept() {
    let _env = test_env();
    let (mut a, me) = handoff_start();
    const CLASS: u64 = 64 << 10;
    const BIG: usize = 63_000; // 16 pages
    const SMALL: usize = 58_000; // 15 pages, the same class
    let mut plan = vec![BIG; 12];
    plan.extend([SMALL; 8]);
    plan.extend([BIG, SMALL].repeat(8));

    // What we keep of each memfd: its address and length.
    let mut kept: HashMap<u64, (usize, usize)> = HashMap::new();
    // Plain `alloc` rounds after the first two, and how many of them got a memfd we had before.
    let (mut plain, mut reused) = (0, 0);
    let (mut same_address, mut resized) = (0, 0);
    for (i, &size) in plan.iter().enumerate() {
        let seed = i as u64 + 1;
        let with = i % 5 == 4;
        let mess = i % 3 != 2;
        let during = |view: &View, r: &Round| {
            if mess {
                scribble(view, r);
            }
        };
        let r = receive(&mut a, me, (seed, size, with), Access::Write, true, during);
        assert_eq!(
            r.memfd_len, CLASS,
            "block {seed}: a memfd is made a class long"
        );
        let known = kept.get(&r.ino).copied();
        match known {
            Some((addr, len)) if len == pages(size) => {
                assert_eq!(
                    r.addr, addr,
                    "block {seed}: memfd {} came back, but not at the address we kept",
                    r.ino
                );
                same_address += 1;
            }
            Some(_) => resized += 1,
            None => {}
        }
        if !with && i >= 2 {
            plain += 1;
            reused += usize::from(known.is_some());
        }
        // The view was the kept mapping: it stays, at the same address.
        assert_mapping(
            r.addr,
            r.ino,
            pages(size),
            RW,
            &format!("block {seed}, kept after it went back"),
        );
        kept.insert(r.ino, (r.addr, pages(size)));
    }
    eprintln!(
        "{} rounds, {} memfds: {reused} of {plain} plain rounds reused one; {same_address} shown \
         at the kept address, {resized} resized",
        plan.len(),
        kept.len()
    );
    // A reads our returns on its next send, so two memfds take turns. (Blocks made by
    // `alloc_with` are left out: the maker may give a fill function only a fresh block, or one
    // nobody else ever mapped.)
    assert!(
        reused * 5 >= plain * 4,
        "only {reused} of {plain} plain blocks were memfds we had before"
    );
    assert!(
        same_address >= 15 && resized >= 2,
        "{same_address} blocks at a kept address, {resized} resized: the checks prove little"
    );
    a.exit();
}

// ---------------------------------------------------------------------------------------------
// 5. What we keep of lent blocks is counted, and released
// ---------------------------------------------------------------------------------------------

/// Blocks `seeds` of `size` bytes from A, each locked, checked, freed: what we then keep, by
/// inode (the address of its mapping).
fn keep_some(
    a: &mut Maker,
    me: Pid,
    seeds: std::ops::Range<u64>,
    size: usize,
) -> HashMap<u64, usize> {
    let mut kept = HashMap::new();
    for seed in seeds {
        let r = receive(a, me, (seed, size, false), Access::Write, true, |_, _| {});
        kept.insert(r.ino, r.addr);
    }
    kept
}

/// Fails unless `pooled()` counts exactly `kept` (each with its mapping's bytes), and we hold their
/// descriptors and mappings, and no other block memfd but `probe`.
fn assert_keeps(kept: &HashMap<u64, usize>, size: usize, probe: u64, what: &str) {
    let n = kept.len();
    assert!(n >= 1, "{what}: nothing to keep");
    assert_eq!(
        pooled(),
        (n, (n * pages(size)) as u64),
        "{what}: pooled() does not count what we kept"
    );
    for (&ino, &addr) in kept {
        assert_mapping(addr, ino, pages(size), RW, what);
    }
    let mut expected: HashSet<u64> = kept.keys().copied().collect();
    expected.insert(probe);
    assert_eq!(block_inodes(), expected, "{what}: the block memfds we hold");
}

/// Fails unless nothing of `kept` is mapped or open here any more, and nothing is pooled.
fn assert_released(kept: &HashMap<u64, usize>, what: &str) {
    for &ino in kept.keys() {
        assert!(
            !support::maps_inode(ino),
            "{what}: memfd {ino} is still mapped: {:?}",
            support::memfd_maps("self")
        );
        assert!(
            !block_inodes().contains(&ino),
            "{what}: memfd {ino} is still open"
        );
    }
    assert_eq!(pooled(), (0, 0), "{what}: still counted");
}

// Fails if trim, set_limit(Some(0)) or the sender's exit leave kept mappings or their descriptors.
#[test]
fn kept_mappings_of_lent_blocks_go_with_trim_set_limit_and_their_senders_exit() {
    let _env = test_env();
    let (mut a, me) = handoff_start();
    const SIZE: usize = 40_000; // ten pages, the 40 KiB class
    // A block of our own, held throughout: locking it is a call on our table that keeps nothing.
    let probe = alloc(b"probe", me).unwrap();
    let probe_ino = {
        let view = lock(probe, me).unwrap();
        support::inode_mapped_at(view.as_ptr() as usize).unwrap()
    };
    let fds_before = support::fd_count("self");

    let kept = keep_some(&mut a, me, 0..6, SIZE);
    assert_keeps(&kept, SIZE, probe_ino, "after six blocks");
    assert_eq!(trim(), kept.len(), "trim did not count what we kept");
    assert_released(&kept, "after trim");

    let kept = keep_some(&mut a, me, 6..12, SIZE);
    assert_keeps(&kept, SIZE, probe_ino, "after six more");
    set_limit(Some(0));
    assert_released(&kept, "after set_limit(Some(0))");
    // Nothing is kept under a cap of 0.
    let r = receive(
        &mut a,
        me,
        (12, SIZE, false),
        Access::Write,
        false,
        |_, _| {},
    );
    assert!(
        !support::maps_inode(r.ino) && !block_inodes().contains(&r.ino),
        "a block was kept under a cap of 0"
    );
    assert_eq!(pooled(), (0, 0));
    set_limit(None);

    let kept = keep_some(&mut a, me, 13..19, SIZE);
    assert_keeps(&kept, SIZE, probe_ino, "with the cap lifted");
    // A exits: its channel ends, and what we kept of its blocks goes on our next call.
    a.exit();
    common::wait_until(procs::LIMIT, || {
        drop(lock(probe, me).unwrap());
        pooled() == (0, 0)
    });
    assert_released(&kept, "after the sender exited");
    assert_eq!(block_inodes(), HashSet::from([probe_ino]));
    assert_eq!(
        support::fd_count("self"),
        fds_before,
        "descriptors left after the sender exited: {:?}",
        support::fd_targets("self")
    );
    free(probe, me).unwrap();
}

// Fails if kept mappings never expire: the next block after the idle time must find them stale.
#[test]
fn kept_mappings_idle_past_the_idle_time_go_with_the_next_block_that_comes() {
    let _env = TestEnv::new();
    const IDLE: Duration = Duration::from_millis(300);
    support::set_env(POOL_IDLE_ENV, &IDLE.as_millis().to_string());
    let (mut a, me) = handoff_start();
    const SIZE: usize = 40_000;

    let x = receive(&mut a, me, (1, SIZE, false), Access::Write, true, |_, _| {});
    let y = receive(&mut a, me, (2, SIZE, false), Access::Write, true, |_, _| {});
    let last_kept = Instant::now();
    assert_ne!(x.ino, y.ino, "block 1's return cannot have been read yet");
    assert_eq!(pooled(), (2, 2 * pages(SIZE) as u64));
    // Both are older than the idle time when the next block comes.
    std::thread::sleep(
        (last_kept + IDLE + Duration::from_millis(100)).saturating_duration_since(Instant::now()),
    );
    let z = receive(&mut a, me, (3, SIZE, false), Access::Write, true, |_, _| {});
    assert_eq!(
        pooled(),
        (1, pages(SIZE) as u64),
        "stale kept mappings did not go when the next block came (it is kept alone)"
    );
    for old in [x, y] {
        if old.ino != z.ino {
            assert!(
                !support::maps_inode(old.ino) && !block_inodes().contains(&old.ino),
                "memfd {} is still kept after the idle time",
                old.ino
            );
        }
    }
    a.exit();
}

// ---------------------------------------------------------------------------------------------
// 6. Fork
// ---------------------------------------------------------------------------------------------

// Fails if a child forked by a receiver keeps the kept mappings (or descriptors) it inherited.
#[test]
fn a_child_forked_by_a_receiver_drops_the_kept_mappings_it_inherits() {
    let _env = test_env();
    let (mut a, me) = handoff_start();
    const SIZE: usize = 40_000;
    const READY: u32 = 1;
    const AGAIN: u32 = 2;

    let kept = keep_some(&mut a, me, 0..4, SIZE);
    assert_eq!(pooled().0, kept.len());
    let kept_list: Vec<(u64, usize)> = kept.iter().map(|(&ino, &addr)| (ino, addr)).collect();
    let (mut child, mut to_child) = fork_with_channel(move |mut end| {
        let check = |when: &str| {
            for &(ino, addr) in &kept_list {
                assert!(
                    !is_mapped(addr, pages(SIZE)),
                    "{when}: the child still maps the parent's kept mapping at {addr:#x}"
                );
                assert!(
                    !support::maps_inode(ino),
                    "{when}: the child maps memfd {ino}"
                );
            }
            assert_eq!(pooled(), (0, 0), "{when}: the child counts kept blocks");
            assert!(
                block_fds().is_empty(),
                "{when}: the child holds block memfds: {:?}",
                support::fd_targets("self")
            );
        };
        check("right after the fork");
        end.send(READY);
        assert_eq!(end.recv(), AGAIN);
        check("after the sender reused the blocks");
        0
    });
    assert_eq!(to_child.recv(), READY);
    // The sender reuses those memfds for us: we see the new bytes; the child sees nothing.
    let mut again = HashSet::new();
    for seed in 4..8 {
        let r = receive(
            &mut a,
            me,
            (seed, SIZE, false),
            Access::Write,
            true,
            |_, _| {},
        );
        again.insert(r.ino);
    }
    assert!(
        again.iter().any(|ino| kept.contains_key(ino)),
        "none of the kept memfds came back: the child's check proves little"
    );
    to_child.send(AGAIN);
    child.expect_success();
    a.exit();
}

// Fails if a forked child keeps its parent's kept mappings, or a block held at a fork is reused.
#[test]
fn a_child_forked_by_a_maker_drops_its_kept_mappings_and_blocks_held_at_the_fork_are_not_reused() {
    let _env = test_env();
    let me = support::start_with_empty_pool();
    let held_data = pattern(1, 8_192);
    let held = alloc(&held_data, me).unwrap();
    let (view, h) = lock_check(held, me, &held_data, Access::Write, "held block");
    drop(view);
    let pooled_data = pattern(2, 4_096);
    let p = alloc(&pooled_data, me).unwrap();
    let (view, p_r) = lock_check(p, me, &pooled_data, Access::Write, "pooled block");
    drop(view);
    free(p, me).unwrap();
    assert_eq!(pooled(), (1, 4_096));
    assert_mapping(h.addr, h.ino, 8_192, RW, "the held block's kept mapping");
    assert_mapping(
        p_r.addr,
        p_r.ino,
        4_096,
        RW,
        "the pooled block's kept mapping",
    );

    let inherited = [(h.addr, h.ino, 8_192), (p_r.addr, p_r.ino, 4_096)];
    let mut child = Child::fork(move || {
        for (addr, ino, len) in inherited {
            assert!(
                !is_mapped(addr, len),
                "the child still maps a kept mapping at {addr:#x}"
            );
            assert!(!support::maps_inode(ino), "the child maps memfd {ino}");
        }
        assert_eq!(pooled(), (0, 0), "the child kept the pool");
        assert!(
            block_fds().is_empty(),
            "the child holds block memfds: {:?}",
            support::fd_targets("self")
        );
        0
    });
    child.expect_success();
    assert_mapping(h.addr, h.ino, 8_192, RW, "the held block's, after the fork");
    assert_mapping(
        p_r.addr,
        p_r.ino,
        4_096,
        RW,
        "the pooled block's, after the fork",
    );

    // The block held at the fork never comes back.
    free(held, me).unwrap();
    assert_eq!(
        pooled(),
        (1, 4_096),
        "a block held at a fork went to the pool"
    );
    let data = pattern(3, 8_192);
    let h2 = alloc(&data, me).unwrap();
    let (view, r) = lock_check(h2, me, &data, Access::Write, "after the fork");
    assert_ne!(r.ino, h.ino, "a block held at a fork was reused");
    drop(view);
    free(h2, me).unwrap();
}
