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
