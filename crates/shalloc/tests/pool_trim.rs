//! The broker gives back the pages of warm blocks that a process keeps unused in its pool past
//! its idle time — also while that process makes no call at all (no thread of ours runs in it).
//!
//! 1. A process pools a block and then blocks on a pipe: within a few broker ticks the memfd it
//!    still holds has no pages left; its next allocation shows exactly the new bytes and zeros
//!    past them, and the trimmed memfd is reused or closed.
//! 2. Before its idle time, the broker leaves a pooled block's pages alone.
//! 3. A process that keeps taking a pooled block just as it turns idle (idle time 1 ms) races the
//!    broker's trimming for a few seconds: every block shows exactly its bytes and zeros past them.
//!
//! How pages are seen: the test process opens the child's memfd through `/proc/<pid>/fd/N` and
//! reads its `st_blocks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use common::TestEnv;
use procs::{End, fork_with_channel};
use shalloc::Pid;
use shalloc::pool::{POOL_IDLE_ENV, pooled};

/// What `/proc/<pid>/fd/N` reads for a block's memfd.
const BLOCK_LINK: &str = "/memfd:shalloc (deleted)";
/// Not a whole number of pages: a class-long memfd has a tail past the data.
const SIZE: usize = (1 << 20) - 1000;
/// How long the broker may take to trim an idle block: its tick is 500 ms.
const LIMIT: Duration = Duration::from_secs(10);

/// The block memfds `pid` holds: (descriptor number, inode, 512-byte blocks allocated).
fn block_memfds(pid: u32) -> Vec<(u32, u64, u64)> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy() != BLOCK_LINK {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let n = entry.file_name().to_string_lossy().parse().unwrap();
        found.push((n, meta.ino(), meta.blocks()));
    }
    found
}

/// A pattern of `len` bytes for round `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8) | 1)
        .collect()
}

/// In the child: allocates `data` into our own table, checks it through a view, and returns the
/// block's inode and memfd (through our `/proc/self/fd`) with zeros past the data checked.
fn alloc_check(data: &[u8], me: Pid) -> (shalloc::Handle, u64) {
    let h = shalloc::alloc(data, me).unwrap();
    let view = shalloc::lock(h, me).unwrap();
    assert_eq!(
        view.to_vec(),
        data,
        "a block shows other bytes than were put in"
    );
    drop(view);
    let memfds = block_memfds(std::process::id());
    let mut checked = None;
    for (n, ino, _) in memfds {
        let file = File::open(format!("/proc/self/fd/{n}")).unwrap();
        let len = file.metadata().unwrap().len();
        let mut head = vec![0u8; data.len()];
        file.read_exact_at(&mut head, 0).unwrap();
        if head != data {
            continue;
        }
        let mut tail = vec![1u8; (len - data.len() as u64) as usize];
        file.read_exact_at(&mut tail, data.len() as u64).unwrap();
        assert!(
            tail.iter().all(|&b| b == 0),
            "a byte past the new data is not zero"
        );
        checked = Some(ino);
    }
    (h, checked.expect("no memfd holds the block's bytes"))
}

/// Waits until `cond` holds, or fails after [`LIMIT`] with `what()`.
fn wait_for(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "after {LIMIT:?}: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child of tests 1 and 2: pools one block, says so (with its inode), waits without any
/// shalloc call, then allocates again and says which memfd it got.
fn pool_then_wait(mut end: End, idle_ms: &str) -> i32 {
    support::set_env(POOL_IDLE_ENV, idle_ms);
    let me = Pid::current();
    let (h, ino) = alloc_check(&pattern(1, SIZE), me);
    shalloc::free(h, me).unwrap();
    assert_eq!(pooled().0, 1, "the block was not pooled");
    end.send(u32::try_from(ino).unwrap());
    // No shalloc call until the test says so.
    assert_eq!(end.recv(), 1);
    let (h, again) = alloc_check(&pattern(2, SIZE), me);
    end.send(u32::try_from(again).unwrap());
    // Kept alive until the test looked at our descriptors.
    assert_eq!(end.recv(), 2);
    shalloc::free(h, me).unwrap();
    0
}

// Fails if the broker does not trim pooled blocks past their deadline (or trims the wrong file),
// or if a trimmed block taken again shows anything but its new bytes and zeros.
#[test]
fn an_idle_pool_gives_its_pages_back_without_a_call() {
    let _env = TestEnv::new();
    shalloc::broker_pid().unwrap();
    let (mut child, mut end) = fork_with_channel(|end| pool_then_wait(end, "300"));
    let ino = u64::from(end.recv());
    let pid = child.pid().as_raw();
    let blocks_of = || {
        block_memfds(pid)
            .into_iter()
            .find(|&(_, i, _)| i == ino)
            .map(|(_, _, blocks)| blocks)
    };
    assert!(
        blocks_of().is_some_and(|b| b > 0),
        "the pooled block has no pages to begin with"
    );
    wait_for(
        || format!("the pooled block still has {:?} blocks", blocks_of()),
        || blocks_of() == Some(0),
    );
    end.send(1);
    // Its next call finds the block idle too: reused (empty) or closed, never left behind.
    let again = u64::from(end.recv());
    let held = block_memfds(pid).iter().any(|&(_, i, _)| i == ino);
    assert!(
        again == ino || !held,
        "the trimmed block was neither reused nor closed"
    );
    end.send(2);
    child.expect_success();
}

// Fails if the broker trims a block before its idle time (it would cost the process a refill of
// fresh pages for nothing).
#[test]
fn a_pooled_block_keeps_its_pages_before_its_idle_time() {
    let _env = TestEnv::new();
    shalloc::broker_pid().unwrap();
    let (mut child, mut end) = fork_with_channel(|end| pool_then_wait(end, "60000"));
    let ino = u64::from(end.recv());
    let pid = child.pid().as_raw();
    // Four of the broker's ticks.
    std::thread::sleep(Duration::from_millis(2_000));
    let blocks = block_memfds(pid)
        .into_iter()
        .find(|&(_, i, _)| i == ino)
        .map(|(_, _, b)| b);
    assert!(
        blocks.is_some_and(|b| b > 0),
        "a block pooled for less than its idle time lost its pages: {blocks:?}"
    );
    end.send(1);
    assert_eq!(
        u64::from(end.recv()),
        ino,
        "a block pooled for less than its idle time was not reused"
    );
    end.send(2);
    child.expect_success();
}

// Fails if a block the broker is emptying can be taken (a refill would lose bytes to its punch),
// or if a block emptied meanwhile is refilled as if its pages were there.
#[test]
fn taking_a_block_as_the_broker_trims_it_loses_nothing() {
    let _env = TestEnv::new();
    shalloc::broker_pid().unwrap();
    let (mut child, mut end) = fork_with_channel(|mut end| {
        support::set_env(POOL_IDLE_ENV, "1");
        let me = Pid::current();
        let started = Instant::now();
        let mut rounds = 0u32;
        let mut seed = 0u8;
        while started.elapsed() < Duration::from_secs(3) {
            seed = seed.wrapping_add(1);
            let (h, _) = alloc_check(&pattern(seed, SIZE), me);
            shalloc::free(h, me).unwrap();
            // Idle for 0–2 ms: sometimes past the deadline when the broker looks.
            std::thread::sleep(Duration::from_micros(u64::from(seed % 3) * 1_000));
            rounds += 1;
        }
        end.send(rounds);
        0
    });
    let rounds = end.recv();
    assert!(rounds > 50, "only {rounds} rounds");
    child.expect_success();
}

// ---------------------------------------------------------------------------------------------
// A process that lies in its pool area, and a table that moves to a new broker
// ---------------------------------------------------------------------------------------------

/// What `/proc/self/fd/N` reads for a table segment's memfd.
const TABLE_LINK: &str = "/memfd:shalloc-table (deleted)";

/// This process's own table segment's header and pool area, mapped again read/write and shared:
/// through `/proc/self/fd` when the segment's memfd is open here, else through the mapping the
/// client made of it (`/proc/self/map_files`, which needs privileges), else at that mapping itself.
struct OwnPoolArea {
    base: *mut std::sync::atomic::AtomicU64,
    /// The length of our own mapping of it (0: we use the client's).
    len: usize,
}

impl OwnPoolArea {
    fn map() -> OwnPoolArea {
        use shalloc_protocol::segment::SLOTS_AT;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.contains("memfd:shalloc-table"))
            .expect("our table is mapped");
        let range = line.split(' ').next().unwrap();
        let by_fd = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::read_link(p).is_ok_and(|t| t.as_os_str() == TABLE_LINK));
        let path = by_fd.unwrap_or_else(|| format!("/proc/self/map_files/{range}").into());
        let Ok(file) = File::options().read(true).write(true).open(&path) else {
            let start = usize::from_str_radix(range.split('-').next().unwrap(), 16).unwrap();
            return OwnPoolArea {
                base: start as *mut std::sync::atomic::AtomicU64,
                len: 0,
            };
        };
        let len = SLOTS_AT.next_multiple_of(rustix::param::page_size());
        assert!(file.metadata().unwrap().len() >= len as u64);
        // SAFETY: a new shared mapping of the segment at an address the kernel picks aliases no
        // Rust memory; the memfd is sealed against shrinking and at least `len` long, and this
        // test reaches the mapping only through atomics.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )
        }
        .unwrap();
        OwnPoolArea {
            base: ptr.cast(),
            len,
        }
    }

    fn word(&self, entry: usize, field: usize) -> &std::sync::atomic::AtomicU64 {
        use shalloc_protocol::segment::{HEADER_BYTES, POOL_ENTRIES, POOL_ENTRY_BYTES};
        assert!(entry < POOL_ENTRIES && field < 2);
        let offset = HEADER_BYTES + entry * POOL_ENTRY_BYTES + field * 8;
        // SAFETY: `offset` is 8-aligned and inside the mapping, which lives as long as `self` (the
        // client's lives as long as our table, which this test never gives up).
        unsafe { &*self.base.add(offset / 8) }
    }

    /// Shows the broker, in entry `entry`, a forged `Kept { fd }` past its deadline.
    fn forge_kept(&self, entry: usize, fd: u32) {
        use std::sync::atomic::Ordering;
        self.word(entry, 1).store(0, Ordering::SeqCst);
        self.word(entry, 0)
            .store((u64::from(fd) << 2) | 1, Ordering::SeqCst);
    }

    /// Entry `entry`'s deadline word.
    fn deadline(&self, entry: usize) -> u64 {
        self.word(entry, 1)
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Entry `entry`'s state word: (descriptor, status: 0 empty, 1 kept, 2 trimming, 3 trimmed).
    fn state(&self, entry: usize) -> (u32, u64) {
        let word = self
            .word(entry, 0)
            .load(std::sync::atomic::Ordering::SeqCst);
        ((word >> 2) as u32, word & 0b11)
    }
}

impl Drop for OwnPoolArea {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: exactly the mapping `map` made; nothing refers to it once `self` goes.
            let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
        }
    }
}

/// The descriptor number and memfd of the block memfd this process holds whose bytes start
/// with `data`.
fn memfd_holding(data: &[u8]) -> (u32, File) {
    for (n, _, _) in block_memfds(std::process::id()) {
        let file = File::open(format!("/proc/self/fd/{n}")).unwrap();
        let mut head = vec![0u8; data.len()];
        if file.read_exact_at(&mut head, 0).is_ok() && head == data {
            return (n, file);
        }
    }
    panic!("no block memfd holds the bytes")
}

/// 512-byte blocks allocated to `file`.
fn blocks(file: &File) -> u64 {
    file.metadata().unwrap().blocks()
}

/// Reads all of `file` through its descriptor.
fn whole(file: &File) -> Vec<u8> {
    let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

// Fails if the broker punches (or otherwise touches) anything but a sealed writable memfd of the
// liar's when the liar's pool area names other files — a regular file, a frozen block, a pipe, a
// descriptor it does not have — or if a lie about its own live block hurts anything beyond that
// block, or the broker stops serving.
#[test]
fn a_lying_pool_area_hurts_only_the_liars_own_block() {
    let env = TestEnv::new();
    shalloc::broker_pid().unwrap();
    let dir = env.dir.clone();
    let (mut child, mut end) = fork_with_channel(move |mut end| {
        // Nothing of our own is ever pooled here, so only the forged entries are shown.
        support::set_env(POOL_IDLE_ENV, "60000");
        let me = Pid::current();
        let control = pattern(5, 20_000);
        let control_h = shalloc::alloc(&control, me).unwrap();
        let (_, control_fd) = memfd_holding(&control);
        let frozen = pattern(7, 30_000);
        let frozen_h = shalloc::alloc_frozen(&frozen, me).unwrap();
        let (frozen_n, frozen_fd) = memfd_holding(&frozen);
        let live = pattern(9, 40_000);
        let live_h = shalloc::alloc(&live, me).unwrap();
        let live_view = shalloc::lock(live_h, me).unwrap();
        let (live_n, live_fd) = memfd_holding(&live);
        let text = pattern(11, 50_000);
        let path = dir.join("regular");
        std::fs::write(&path, &text).unwrap();
        let regular = File::options().read(true).write(true).open(&path).unwrap();
        let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let entries = [
            regular.as_raw_fd() as u32,
            frozen_n,
            live_n,
            999_999,
            pipe_r.as_raw_fd() as u32,
        ];
        let (frozen_blocks, regular_blocks) = (blocks(&frozen_fd), blocks(&regular));
        assert!(blocks(&live_fd) > 0 && frozen_blocks > 0 && regular_blocks > 0);
        let area = OwnPoolArea::map();
        // The last entries: our own pool (empty) would show its blocks from the first one.
        let first = shalloc_protocol::segment::POOL_ENTRIES - entries.len();
        for (i, &fd) in entries.iter().enumerate() {
            assert_eq!(area.state(first + i).1, 0, "entry {} is in use", first + i);
            area.forge_kept(first + i, fd);
        }
        // Every lie is looked at within a tick or two: taken up (`Trimming`), then `Trimmed` if
        // it was punched, or `Kept` again with a deadline that never comes if it was refused.
        let settled = |i: usize| {
            let (fd, status) = area.state(first + i);
            fd == entries[i]
                && (status == 3 || (status == 1 && area.deadline(first + i) == u64::MAX))
        };
        wait_for(
            || {
                let states: Vec<_> = (0..entries.len()).map(|i| area.state(first + i)).collect();
                format!("the forged entries are still {states:?}")
            },
            || (0..entries.len()).all(settled),
        );
        // Only the live block, a sealed writable memfd of ours, was punched.
        let punched: Vec<bool> = (0..entries.len())
            .map(|i| area.state(first + i).1 == 3)
            .collect();
        assert_eq!(
            punched,
            [false, false, true, false, false],
            "which forged entries the broker punched"
        );
        // The regular file and the frozen block: every byte and every page where it was.
        assert_eq!(whole(&regular)[..], text[..], "the regular file changed");
        assert_eq!(
            blocks(&regular),
            regular_blocks,
            "the regular file lost pages"
        );
        assert_eq!(
            whole(&frozen_fd)[..frozen.len()],
            frozen[..],
            "the frozen block changed"
        );
        assert_eq!(
            blocks(&frozen_fd),
            frozen_blocks,
            "the frozen block lost pages"
        );
        let frozen_view = shalloc::lock_read_only(frozen_h, me).unwrap();
        assert_eq!(
            frozen_view.to_vec(),
            frozen,
            "the frozen block shows other bytes"
        );
        drop(frozen_view);
        // The pipe still carries bytes.
        rustix::io::write(&pipe_w, b"still a pipe").unwrap();
        let mut got = [0u8; 12];
        rustix::io::read(&pipe_r, &mut got).unwrap();
        assert_eq!(&got, b"still a pipe");
        // The live block we lied about: punched (we could have done that ourselves), and that
        // is all: its handle is open, its view and a new lock show its size, in zeros.
        assert_eq!(
            blocks(&live_fd),
            0,
            "the live block we showed kept its pages"
        );
        assert!(
            live_view.to_vec().iter().all(|&b| b == 0),
            "the punched block shows bytes through its view"
        );
        assert_eq!(live_view.len(), live.len());
        drop(live_view);
        let again = shalloc::lock(live_h, me).unwrap();
        assert_eq!(again.to_vec(), vec![0u8; live.len()]);
        drop(again);
        // The block we told nothing about is untouched, through its descriptor and a view.
        assert_eq!(whole(&control_fd)[..control.len()], control[..]);
        assert!(blocks(&control_fd) > 0, "a block nobody showed lost pages");
        assert_eq!(shalloc::lock(control_h, me).unwrap().to_vec(), control);
        // Another process locks our handles through the broker, which still serves.
        end.send(control_h.as_raw());
        end.send(frozen_h.as_raw());
        assert_eq!(end.recv(), 1);
        // Our own calls still work: a new block shows exactly its bytes.
        let h = shalloc::alloc(&pattern(13, SIZE), me).unwrap();
        assert_eq!(shalloc::lock(h, me).unwrap().to_vec(), pattern(13, SIZE));
        shalloc::free(h, me).unwrap();
        for h in [control_h, frozen_h, live_h] {
            shalloc::free(h, me).unwrap();
        }
        drop((pipe_r, pipe_w, area));
        0
    });
    let owner = child.pid();
    let control_h = shalloc::Handle::from_raw(end.recv()).unwrap();
    let frozen_h = shalloc::Handle::from_raw(end.recv()).unwrap();
    assert_eq!(
        shalloc::lock(control_h, owner).unwrap().to_vec(),
        pattern(5, 20_000),
        "another process sees other bytes in the liar's untouched block"
    );
    assert_eq!(
        shalloc::lock_read_only(frozen_h, owner).unwrap().to_vec(),
        pattern(7, 30_000),
        "another process sees other bytes in the liar's frozen block"
    );
    let h = shalloc::alloc(b"the broker serves", Pid::current()).unwrap();
    shalloc::free(h, Pid::current()).unwrap();
    end.send(1);
    child.expect_success();
}

/// The table segment mappings this process has.
fn table_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:shalloc-table"))
        .count()
}

// Fails if a process whose broker was replaced cannot use the block it pooled under the old one
// (or gets wrong bytes from it), keeps the old segment mapped once nothing needs it, or if the new
// broker takes anything of it for idle: a block in use, or a pooled one before its idle time.
#[test]
fn a_pool_follows_its_table_to_a_new_broker() {
    let env = TestEnv::new();
    let first = shalloc::broker_pid().unwrap();
    let (mut child, mut end) = fork_with_channel(|mut end| {
        support::set_env(POOL_IDLE_ENV, "60000");
        let me = Pid::current();
        let (h, ino) = alloc_check(&pattern(1, SIZE), me);
        shalloc::free(h, me).unwrap();
        assert_eq!(pooled().0, 1, "the block was not pooled");
        assert_eq!(table_mappings(), 1);
        // The test stops the broker now.
        end.send(1);
        assert_eq!(end.recv(), 1);
        // The next call finds a new broker (started on demand) and a new table: the block pooled
        // under the old one comes back with exactly the new bytes.
        let (kept_h, again) = alloc_check(&pattern(2, SIZE - 5000), me);
        assert_eq!(
            again, ino,
            "the block pooled under the old broker was not reused"
        );
        assert_eq!(
            table_mappings(),
            1,
            "the old table's segment is still mapped with nothing shown in it"
        );
        // A second block, in use, and a third pooled under the new broker.
        let (live_h, live_ino) = alloc_check(&pattern(3, SIZE / 2), me);
        let (pooled_h, pooled_ino) = alloc_check(&pattern(4, SIZE / 4), me);
        shalloc::free(pooled_h, me).unwrap();
        assert_eq!(pooled().0, 1);
        for v in [ino, live_ino, pooled_ino] {
            end.send(u32::try_from(v).unwrap());
        }
        // The test watches our pages for a few of the new broker's ticks.
        assert_eq!(end.recv(), 2);
        for (h, seed, size) in [(kept_h, 2, SIZE - 5000), (live_h, 3, SIZE / 2)] {
            let view = shalloc::lock(h, me).unwrap();
            assert_eq!(view.to_vec(), pattern(seed, size), "a block in use changed");
            drop(view);
        }
        // The pooled one is reused, with exactly its new bytes.
        let (h, again) = alloc_check(&pattern(5, SIZE / 4 - 100), me);
        assert_eq!(
            again, pooled_ino,
            "the block pooled under the new broker was not reused"
        );
        for h in [h, kept_h, live_h] {
            shalloc::free(h, me).unwrap();
        }
        0
    });
    assert_eq!(end.recv(), 1);
    assert!(shalloc::admin::stop_broker().unwrap(), "no broker to stop");
    common::wait_until(LIMIT, || env.running_broker().is_none());
    end.send(1);
    let inodes: Vec<u64> = (0..3).map(|_| u64::from(end.recv())).collect();
    let second = env
        .running_broker()
        .expect("the child started a new broker");
    assert_ne!(second, first.as_raw(), "the same broker");
    let pid = child.pid().as_raw();
    let pages = || {
        let held = block_memfds(pid);
        inodes
            .iter()
            .map(|&ino| held.iter().find(|&&(_, i, _)| i == ino).map(|&(_, _, b)| b))
            .collect::<Vec<_>>()
    };
    // Four of the new broker's ticks.
    let until = Instant::now() + Duration::from_millis(2_000);
    while Instant::now() < until {
        let now = pages();
        assert!(
            now.iter().all(|b| b.is_some_and(|b| b > 0)),
            "the new broker took the pages of a block it should have left alone \
             (in use, in use, pooled within its idle time): {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    end.send(2);
    child.expect_success();
}

// Fails if a child made without `fork()`'s atfork handlers (a raw `clone`) touches the pool's
// segment entries it inherited: the segment is not mapped in a child, so it would crash (found by
// review).
#[test]
fn a_child_of_a_raw_clone_does_not_touch_its_parents_pool_entries() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let (h, _) = alloc_check(&pattern(1, SIZE), me);
    shalloc::free(h, me).unwrap();
    assert_eq!(
        pooled().0,
        1,
        "the block was not pooled (and shown to the broker)"
    );
    // SAFETY: `clone` without `CLONE_VM` or a new stack is a `fork` that runs no atfork handler;
    // the child runs only the code below and leaves with `_exit`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(libc::SIGCHLD),
            0,
            0,
            0,
            0,
        )
    };
    if pid == 0 {
        let outcome = std::panic::catch_unwind(|| {
            let me = Pid::current();
            let (h, _) = alloc_check(&pattern(2, SIZE), me);
            shalloc::free(h, me).unwrap();
        });
        // SAFETY: ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(i32::from(outcome.is_err())) };
    }
    assert!(pid > 0, "clone failed");
    let pid = i32::try_from(pid).unwrap();
    let deadline = Instant::now() + LIMIT;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child without blocking; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our own child, by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child of a raw clone did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child of a raw clone failed (status {status:#x})"
    );
    // The parent's pool is as it was.
    let (h, _) = alloc_check(&pattern(3, SIZE), me);
    shalloc::free(h, me).unwrap();
}
