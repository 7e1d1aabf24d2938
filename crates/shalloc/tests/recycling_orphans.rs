//! Orphans: blocks process A put into process B's table over their channel (`alloc(data, b)`,
//! sent straight to B) that were still open in B's table when B died. The broker tells A, on B's
//! end of the channel, which of them were clean (`Orphaned` frames: open, never reopened by the
//! broker for anyone, not frozen, and B never forked); A believes that only once B's pidfd shows
//! it exited, and may then reuse those blocks for its OWN table, while A is dumpable. Real
//! processes: the test process is A; B (and a third process C) are forked workers that attached
//! their own tables (so A's allocations into them go over a channel) and obey commands sent over
//! pipes.
//!
//! 1. B killed while it held views of A's blocks: A's own allocations of that class then get B's
//!    old memfds back, with exactly the new bytes and zeros past them to the end of the memfd
//!    (B scribbled past each block's size before it died).
//! 2. An orphan goes only into A's own table: allocations into a live third process's table never
//!    get one (while it sits in A's pool); A's own next ones do.
//! 3. B forked (a child that exited at once) before it was killed: none of its blocks is ever
//!    reused, while the blocks of a second worker killed alongside it that never forked are, and
//!    so is a block A made and freed itself.
//! 4. A third process C locked one of B's blocks through B's table (the broker reopened it for C)
//!    and keeps its view: that block is never reused, B's other blocks are, and C's view still
//!    shows the original bytes afterwards.
//! 5. A non-dumpable A (a forked child acting as A that called `PR_SET_DUMPABLE 0`) never reuses
//!    B's orphans for its own table; it does reuse its own blocks, and B's orphans too once it is
//!    dumpable again.
//! 6. B forging `Orphaned` frames on its end of the channel for blocks it still maps, and staying
//!    alive: A reads them (B's send queue empties) and never reuses those blocks, B's views keep
//!    their bytes; once B really dies, the broker's word does let A reuse them.
//! 7. Descriptors: once B's orphans are back and A's own handles freed, A holds exactly the
//!    descriptors it held before B got anything, plus one per pooled block: nothing of the dead
//!    lease (its pidfd, its channel) is left.
//! 8. C locked one of B's blocks while it was still on the channel (the
//!    broker took it off into its keeping and handed C that copy), then B adopted it: that block
//!    must never be reused either.
//!
//! How reuse is seen: a block's memfd shows in `/proc/self/fd` as `/memfd:shalloc (deleted)`; B
//! finds the inode of the block it holds from its view's mapping in `/proc/self/maps`, and so does
//! A for the blocks of its own table. Memfd inodes are not handed out again while the test runs,
//! so the same inode means the same memfd.
//!
//! A notices a dead lessee when an allocation into its own table misses the pool (it then reaps
//! its leases), when it sends to it, or when it takes a new lease: after B is killed and its table
//! dropped, A's first own allocation of the class misses and reaps, the next ones may reuse B's
//! blocks. A keeps its pooled blocks for `SHALLOC_POOL_IDLE_MS`: each test sets it to a minute
//! before A's first shalloc call, so that a slow machine does not turn reuse into fresh blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/channel_frames.rs"]
mod channel_frames;
mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use channel_frames::{channel_end, outq, send_frame};
#[path = "common/handoff_blocks.rs"]
mod handoff_blocks;
use handoff_blocks::{Memfd, check_view, handle, open_block, pattern, view_inode};

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::TestEnv;
use procs::{Child, End, fork_with_channel};
use rustix::process::DumpableBehavior;
use shalloc::pool::pooled;
use shalloc::{Handle, Pid, View};
use shalloc_protocol::block::class_bytes;
use shalloc_protocol::wire::Orphaned;

// ---------------------------------------------------------------------------------------------
// Blocks: sizes and bytes
// ---------------------------------------------------------------------------------------------

/// The size class every block of these tests is in (sizes from 56 KiB + 1 to 64 KiB).
const CLASS: u64 = 64 << 10;

/// How many blocks A hands B.
const K: u64 = 4;

/// The byte B scribbles past each block's size, up to the end of its memfd.
const JUNK: u8 = 0xa5;

/// The size of block `seed`: varying within [`CLASS`], so that a smaller block may follow a
/// larger one in the same memfd and the bytes between must have been zeroed.
fn size_of(seed: u64) -> u64 {
    let size = CLASS - (seed * 7919) % 8_000;
    debug_assert_eq!(class_bytes(size), CLASS);
    size
}

/// Keeps this process's pool warm for a minute, starts the broker and checks the pool is empty.
fn start() {
    support::keep_pool_warm();
    support::start_with_empty_pool();
}

// ---------------------------------------------------------------------------------------------
// Memfds and views
// ---------------------------------------------------------------------------------------------

/// Locks `h` in our own table, checks it is block `seed`, and checks through the descriptor that
/// every byte of the memfd past its size is zero. Returns the view and the memfd.
fn lock_and_check(h: Handle, seed: u64, size: u64, write: bool, what: &str) -> (View, Memfd) {
    let me = Pid::current();
    let view = shalloc::lock(h, me)
        .unwrap_or_else(|e| panic!("{what}: lock {:#x} (block {seed}): {e:?}", h.as_raw()));
    check_view(&view, seed, size, what);
    let memfd = open_block(view_inode(&view), write);
    assert!(memfd.len >= size, "{what}: memfd shorter than its block");
    let mut tail = vec![0u8; (memfd.len - size) as usize];
    memfd.file.read_exact_at(&mut tail, size).unwrap();
    if let Some(at) = tail.iter().position(|&b| b != 0) {
        panic!(
            "{what}: block {seed} ({size} bytes, memfd {} long, inode {}) has {:#x} at {} past \
             its size: an old block's bytes",
            memfd.len,
            memfd.ino,
            tail[at],
            size as usize + at
        );
    }
    (view, memfd)
}

// ---------------------------------------------------------------------------------------------
// The worker: B or C, a process with its own table that obeys the test
// ---------------------------------------------------------------------------------------------

/// Commands to a worker, each followed by its arguments (all `u64`).
const LOCK_KEEP: u64 = 1; // handle, seed, size → inode (view kept, memfd past size scribbled)
const LOCK_FOREIGN: u64 = 2; // handle, owner, seed, size → inode (view kept)
const CHECK: u64 = 3; // handle, seed, size → 0 (the kept view still shows the block)
const CHECK_UNLOCK: u64 = 4; // handle, seed, size → 0 (checked, then the view dropped)
const FORK: u64 = 5; // → the child's exit code (a child that exits at once)
const FORGE_ORPHANED: u64 = 6; // handle → whether the frame went
const OUTQ: u64 = 7; // → bytes B sent on its channel end that A has not read yet
const MAP_TO: u64 = 9; // handle, target pid → the new handle in the target's table
const EXIT: u64 = 8;

const READY: u64 = 0xbeef;

fn send(end: &mut End, values: &[u64]) {
    support::send_u64s(end.w.as_mut().expect("write end open"), values);
}

fn recv(end: &mut End, n: usize) -> Vec<u64> {
    support::recv_u64s(&mut end.r, n)
}

/// The worker: attaches its table (so that blocks for it come over a channel), then obeys.
fn worker(mut end: End) -> i32 {
    let me = Pid::current();
    shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
    send(&mut end, &[READY]);
    let mut views: HashMap<u64, View> = HashMap::new();
    loop {
        match recv(&mut end, 1)[0] {
            LOCK_KEEP => {
                let a = recv(&mut end, 3);
                let (view, memfd) = lock_and_check(handle(a[0]), a[1], a[2], true, "lessee");
                // A lessee may write anywhere in the memfd it was given: past the size here, so
                // that whoever gets the memfd next must see zeros there again.
                let junk = vec![JUNK; (memfd.len - a[2]) as usize];
                memfd.file.write_all_at(&junk, a[2]).unwrap();
                views.insert(a[0], view);
                send(&mut end, &[memfd.ino]);
            }
            LOCK_FOREIGN => {
                let a = recv(&mut end, 4);
                let owner = Pid::from_raw(u32::try_from(a[1]).unwrap());
                let view = shalloc::lock_read_only(handle(a[0]), owner).unwrap_or_else(|e| {
                    panic!("third process: lock {:#x} in {owner}: {e:?}", a[0])
                });
                check_view(&view, a[2], a[3], "third process");
                let ino = view_inode(&view);
                views.insert(a[0], view);
                send(&mut end, &[ino]);
            }
            CHECK => {
                let a = recv(&mut end, 3);
                let view = views.get(&a[0]).expect("a view kept");
                check_view(view, a[1], a[2], "worker, later");
                send(&mut end, &[0]);
            }
            CHECK_UNLOCK => {
                let a = recv(&mut end, 3);
                let view = views.remove(&a[0]).expect("a view kept");
                check_view(&view, a[1], a[2], "worker, later");
                drop(view);
                send(&mut end, &[0]);
            }
            FORK => {
                let child = common::fork(|| 0);
                let code = common::wait_exit(child, procs::LIMIT);
                send(&mut end, &[u64::try_from(code).unwrap()]);
            }
            FORGE_ORPHANED => {
                let h = u32::try_from(recv(&mut end, 1)[0]).unwrap();
                let frame = Orphaned { handle: h }.encode();
                let sent = send_frame(channel_end(), frame.as_bytes(), &[]);
                send(&mut end, &[u64::from(sent)]);
            }
            OUTQ => {
                let outq = outq(channel_end());
                send(&mut end, &[outq]);
            }
            MAP_TO => {
                let a = recv(&mut end, 2);
                let to = Pid::from_raw(u32::try_from(a[1]).unwrap());
                let new = shalloc::map_handle(handle(a[0]), Pid::current(), to).unwrap();
                send(&mut end, &[u64::from(new.as_raw())]);
            }
            EXIT => return 0,
            other => panic!("worker: unknown command {other}"),
        }
    }
}

/// A worker process, with its pid and its end of the pipes.
struct Worker {
    child: Child,
    end: End,
    pid: Pid,
}

impl Worker {
    fn start() -> Worker {
        let (child, mut end) = fork_with_channel(worker);
        assert_eq!(recv(&mut end, 1)[0], READY, "worker did not start");
        let pid = child.pid();
        Worker { child, end, pid }
    }

    /// Has the worker lock `h` (block `seed`) in its table, scribble past its size and keep the
    /// view: the block's inode.
    fn lock_keep(&mut self, h: Handle, seed: u64) -> u64 {
        send(
            &mut self.end,
            &[LOCK_KEEP, u64::from(h.as_raw()), seed, size_of(seed)],
        );
        recv(&mut self.end, 1)[0]
    }

    /// Has the worker lock `h` in `owner`'s table (through the broker) and keep the view.
    fn lock_foreign(&mut self, h: Handle, owner: Pid, seed: u64) -> u64 {
        let args = [
            LOCK_FOREIGN,
            u64::from(h.as_raw()),
            u64::from(owner.as_raw()),
            seed,
            size_of(seed),
        ];
        send(&mut self.end, &args);
        recv(&mut self.end, 1)[0]
    }

    /// Has the worker check that its view of `h` still shows block `seed`.
    fn check(&mut self, h: Handle, seed: u64) {
        send(
            &mut self.end,
            &[CHECK, u64::from(h.as_raw()), seed, size_of(seed)],
        );
        assert_eq!(recv(&mut self.end, 1)[0], 0);
    }

    /// Has the worker check that its view of `h` still shows block `seed`, then drop it.
    fn check_unlock(&mut self, h: Handle, seed: u64) {
        send(
            &mut self.end,
            &[CHECK_UNLOCK, u64::from(h.as_raw()), seed, size_of(seed)],
        );
        assert_eq!(recv(&mut self.end, 1)[0], 0);
    }

    /// Has the worker fork a child that exits at once, and reap it.
    fn fork_child(&mut self) {
        send(&mut self.end, &[FORK]);
        assert_eq!(recv(&mut self.end, 1)[0], 0, "the worker's child failed");
    }

    /// Has the worker send an `Orphaned` frame for `h` on its channel end: whether it went.
    fn forge_orphaned(&mut self, h: Handle) -> bool {
        send(&mut self.end, &[FORGE_ORPHANED, u64::from(h.as_raw())]);
        recv(&mut self.end, 1)[0] == 1
    }

    fn outq(&mut self) -> u64 {
        send(&mut self.end, &[OUTQ]);
        recv(&mut self.end, 1)[0]
    }

    /// Has the worker duplicate its handle `h` into `to`'s table (`SHMapHandle`): the new handle.
    fn map_to(&mut self, h: Handle, to: Pid) -> Handle {
        send(
            &mut self.end,
            &[MAP_TO, u64::from(h.as_raw()), u64::from(to.as_raw())],
        );
        handle(recv(&mut self.end, 1)[0])
    }

    /// SIGKILLs the worker, reaps it (`waitpid`), and waits until the broker no longer lists a
    /// table for it (it has then sent A its word on B's blocks).
    fn kill(&mut self) {
        support::kill_and_reap(&mut self.child);
        let pid = self.pid;
        let deadline = Instant::now() + procs::LIMIT;
        while procs::table_handles(pid).is_some() {
            assert!(
                Instant::now() < deadline,
                "the broker still lists a table for {pid} {:?} after it was killed",
                procs::LIMIT
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(mut self) {
        send(&mut self.end, &[EXIT]);
        self.child.expect_success();
    }
}

/// Allocates block `seed` into `to`'s table.
fn alloc_block(seed: u64, to: Pid) -> Handle {
    shalloc::alloc(&pattern(seed, size_of(seed)), to)
        .unwrap_or_else(|e| panic!("alloc block {seed} into {to}: {e:?}"))
}

/// Hands worker `w` blocks `seeds` over A's channel, each locked (and kept mapped) by `w`:
/// (handle, seed, inode) of each.
fn hand_over(w: &mut Worker, seeds: std::ops::Range<u64>) -> Vec<(Handle, u64, u64)> {
    let given: Vec<(Handle, u64, u64)> = seeds
        .map(|seed| {
            let h = alloc_block(seed, w.pid);
            (h, seed, w.lock_keep(h, seed))
        })
        .collect();
    let inodes: HashSet<u64> = given.iter().map(|g| g.2).collect();
    assert_eq!(inodes.len(), given.len(), "two live blocks share a memfd");
    given
}

fn inodes_of(given: &[(Handle, u64, u64)]) -> HashSet<u64> {
    given.iter().map(|g| g.2).collect()
}

/// Allocates block `seed` into A's own table, checks its bytes and the zeros past them through
/// the descriptor, and keeps the handle open (so that its block does not go back to the pool):
/// (handle, inode).
fn own_block(seed: u64) -> (Handle, u64) {
    let h = alloc_block(seed, Pid::current());
    let (view, memfd) = lock_and_check(h, seed, size_of(seed), false, "A's own block");
    drop(view);
    (h, memfd.ino)
}

/// `rounds` own allocations (blocks `first..`), all kept open; stops early once every inode of
/// `wanted` came back. Returns the handles and the inodes, in order.
fn own_rounds(first: u64, rounds: u64, wanted: &HashSet<u64>) -> (Vec<Handle>, Vec<u64>) {
    let mut handles = Vec::new();
    let mut inodes = Vec::new();
    for seed in first..first + rounds {
        let (h, ino) = own_block(seed);
        handles.push(h);
        inodes.push(ino);
        if !wanted.is_empty() && wanted.iter().all(|w| inodes.contains(w)) {
            break;
        }
    }
    (handles, inodes)
}

fn free_own(handles: Vec<Handle>) {
    let me = Pid::current();
    for h in handles {
        shalloc::free(h, me).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The channel end, from the worker's side
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 1. A dead lessee's blocks come back
// ---------------------------------------------------------------------------------------------

/// Fails if the broker never sends `Orphaned` for a dead lessee's clean blocks, if A never takes
/// them into its pool (no reap on a miss), or if a reused orphan is not refilled and zeroed.
#[test]
fn killing_a_process_that_held_views_makes_its_blocks_reusable() {
    const ROUNDS: u64 = 4 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let given = hand_over(&mut b, 0..K);
    let theirs = inodes_of(&given);
    b.kill();

    let (own, inodes) = own_rounds(100, ROUNDS, &theirs);
    let back: Vec<u64> = inodes
        .iter()
        .copied()
        .filter(|i| theirs.contains(i))
        .collect();
    eprintln!(
        "{} own allocations after B died; B's blocks {theirs:?} came back: {back:?}",
        inodes.len()
    );
    assert!(
        !back.is_empty(),
        "none of the {K} blocks B held when it died came back into A's own table in {ROUNDS} \
         allocations: {inodes:?}"
    );
    assert_eq!(
        back.len() as u64,
        K,
        "only some of the {K} blocks B held when it died came back: {back:?} of {theirs:?}"
    );
    free_own(own);
}

// ---------------------------------------------------------------------------------------------
// 2. An orphan goes only into our own table
// ---------------------------------------------------------------------------------------------

/// Fails if `pool::take` hands an orphan to an allocation into another process's table (the
/// `target == 0` condition lost): C would see a block whose old holder A cannot vouch for.
#[test]
fn an_orphan_is_reused_only_for_our_own_table() {
    const INTO_C: u64 = 3 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut c = Worker::start();
    let given = hand_over(&mut b, 0..K);
    let theirs = inodes_of(&given);
    b.kill();

    // A's first own allocation of the class misses the pool, and reaps: B's orphans are pooled.
    let (first, first_ino) = own_block(50);
    assert!(
        !theirs.contains(&first_ino),
        "the allocation that found the pool empty got an orphan"
    );
    // Into C's table (kept there, so nothing comes back from C): never one of B's blocks.
    for seed in 200..200 + INTO_C {
        let h = alloc_block(seed, c.pid);
        let ino = c.lock_keep(h, seed);
        assert!(
            !theirs.contains(&ino),
            "block {seed} into C's table got memfd {ino}, which B held when it died"
        );
    }
    // Into our own table: B's blocks (the positive control).
    let (own, inodes) = own_rounds(100, 2 * K, &theirs);
    let back = inodes.iter().filter(|i| theirs.contains(i)).count();
    assert!(
        back > 0,
        "B's orphans were not reused for A's own table either: {inodes:?}, B's {theirs:?}"
    );
    free_own(own);
    shalloc::free(first, Pid::current()).unwrap();
    c.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. A lessee that forked
// ---------------------------------------------------------------------------------------------

/// Fails if the broker calls a dying lessee's blocks clean although it forked (its child may hold
/// every one of them): the fork count in its segment ignored.
#[test]
fn the_blocks_of_a_lessee_that_forked_are_never_reused() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut b2 = Worker::start();
    let forked = inodes_of(&hand_over(&mut b, 0..K));
    let clean = inodes_of(&hand_over(&mut b2, 10..10 + K));
    b.fork_child();
    b.kill();
    b2.kill();

    let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
    for (i, ino) in inodes.iter().enumerate() {
        assert!(
            !forked.contains(ino),
            "own allocation {i} got memfd {ino}, which B held when it died after forking"
        );
    }
    // Positive controls: the blocks of B2, killed alike but never forked, were reused …
    let back = inodes.iter().filter(|i| clean.contains(i)).count();
    eprintln!(
        "{ROUNDS} own allocations: {back} of B2's {K} blocks came back, none of B's (forked)"
    );
    assert!(
        back > 0,
        "none of B2's blocks came back either, so the check above proves nothing: {inodes:?}"
    );
    // … and so is a block A made and freed itself.
    let me = Pid::current();
    let (x, x_ino) = own_block(500);
    shalloc::free(x, me).unwrap();
    let (y, y_ino) = own_block(501);
    assert_eq!(y_ino, x_ino, "A's own freed block was not reused");
    shalloc::free(y, me).unwrap();
    free_own(own);
}

// ---------------------------------------------------------------------------------------------
// 4. A block a third process locked through the lessee's table
// ---------------------------------------------------------------------------------------------

/// Fails if the broker calls a block clean although it reopened it for another process (the
/// `exported` mark ignored): A would write into memory C still maps.
#[test]
fn a_block_a_third_process_locked_through_the_dead_lessees_table_is_never_reused() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut c = Worker::start();
    let given = hand_over(&mut b, 0..K);
    let (h0, seed0, x) = given[0];
    assert_eq!(
        c.lock_foreign(h0, b.pid, seed0),
        x,
        "C locked another block"
    );
    let others: HashSet<u64> = given[1..].iter().map(|g| g.2).collect();
    b.kill();

    let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
    assert!(
        !inodes.contains(&x),
        "A reused memfd {x}, which C locked through B's table and still maps: {inodes:?}"
    );
    let back = inodes.iter().filter(|i| others.contains(i)).count();
    eprintln!(
        "{ROUNDS} own allocations: {back} of B's {} other blocks came back",
        others.len()
    );
    assert!(
        back > 0,
        "none of B's other blocks came back either, so the check above proves nothing: {inodes:?}"
    );
    // C's view still shows its block: nothing was written into it.
    c.check_unlock(h0, seed0);
    free_own(own);
    c.finish();
}

/// Fails if a block the lessee passed on to another table itself (`SHMapHandle`, straight over its
/// own channel to C) is called clean when the lessee dies: A would write its own data into memory
/// C holds a handle to (found by review: only the broker's reopening marked a slot exported).
#[test]
fn a_block_the_lessee_passed_on_to_another_table_is_never_reused() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut c = Worker::start();
    let given = hand_over(&mut b, 0..K);
    let (h0, seed0, x) = given[0];
    let in_c = b.map_to(h0, c.pid);
    assert_eq!(c.lock_keep(in_c, seed0), x, "C got another block");
    let others: HashSet<u64> = given[1..].iter().map(|g| g.2).collect();
    b.kill();

    let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
    assert!(
        !inodes.contains(&x),
        "A reused memfd {x}, which B passed on to C's table: {inodes:?}"
    );
    assert!(
        inodes.iter().any(|i| others.contains(i)),
        "none of B's other blocks came back either, so the check above proves nothing: {inodes:?}"
    );
    c.check_unlock(in_c, seed0);
    free_own(own);
    c.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. A process that is not dumpable
// ---------------------------------------------------------------------------------------------

/// Fails if an orphan is reused while this process is not dumpable (the dumpable check lost):
/// an heir of the dead lessee could then see memory its user may not read through ptrace.
#[test]
fn a_process_that_is_not_dumpable_never_reuses_orphans() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    // A is a child, so that the test process stays dumpable.
    let mut a = Child::fork(|| {
        let me = Pid::current();
        let mut b = Worker::start();
        let theirs = inodes_of(&hand_over(&mut b, 0..K));
        rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
        b.kill();

        let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
        assert!(
            inodes.iter().all(|i| !theirs.contains(i)),
            "A, not dumpable, reused a block B held when it died: {inodes:?}, B's {theirs:?}"
        );
        // Positive control: A does reuse its own blocks …
        let (x, x_ino) = own_block(500);
        shalloc::free(x, me).unwrap();
        let (y, y_ino) = own_block(501);
        assert_eq!(y_ino, x_ino, "A's own freed block was not reused");
        // … and B's, once it is dumpable again: they were in its pool all along.
        rustix::process::set_dumpable_behavior(DumpableBehavior::Dumpable).unwrap();
        let (more, later) = own_rounds(600, 2 * K, &theirs);
        let back = later.iter().filter(|i| theirs.contains(i)).count();
        eprintln!("A, dumpable again: {back} of B's {K} blocks came back");
        assert!(
            back > 0,
            "B's orphans were not reused even once A was dumpable again: {later:?}, B's {theirs:?}"
        );
        shalloc::free(y, me).unwrap();
        free_own(own);
        free_own(more);
        0
    });
    a.expect_success();
}

// ---------------------------------------------------------------------------------------------
// 6. Forged orphans from a live lessee
// ---------------------------------------------------------------------------------------------

/// Fails if A believes an `Orphaned` frame without B's pidfd showing B exited: B (or anyone
/// holding B's end) could then make A write into blocks B still maps.
#[test]
fn forged_orphaned_frames_from_a_live_lessee_free_nothing() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let given = hand_over(&mut b, 0..K);
    let theirs = inodes_of(&given);
    for &(h, _, _) in &given {
        assert!(b.forge_orphaned(h), "B could not send its forged frame");
    }
    assert!(b.outq() > 0, "B's forged frames are not on the channel");
    // A's next send to B reads what waits on the channel: the forged frames.
    let (last, last_seed, last_ino) = hand_over(&mut b, 50..51)[0];
    assert_eq!(
        b.outq(),
        0,
        "A left B's forged frames unread on the channel"
    );

    let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
    assert!(
        inodes.iter().all(|i| !theirs.contains(i) && *i != last_ino),
        "A reused a block live B still maps, on B's forged word: {inodes:?}, B's {theirs:?}"
    );
    // B's views are untouched.
    for &(h, seed, _) in &given {
        b.check(h, seed);
    }
    b.check(last, last_seed);

    // Positive control: once B really dies, the broker's word on the same blocks is believed.
    let mut all = theirs.clone();
    all.insert(last_ino);
    b.kill();
    let (more, later) = own_rounds(200, ROUNDS, &all);
    let back = later.iter().filter(|i| all.contains(i)).count();
    eprintln!("after B died: {back} of its {} blocks came back", all.len());
    assert!(
        back > 0,
        "B's blocks were not reused even after it died: {later:?}, B's {all:?}"
    );
    free_own(own);
    free_own(more);
}

// ---------------------------------------------------------------------------------------------
// 7. Descriptors
// ---------------------------------------------------------------------------------------------

/// Fails if the lease of a dead lessee (its pidfd and channel) is kept once its channel finished
/// and its orphans are back, or if an orphan's descriptor leaks on its way to the pool.
#[test]
fn nothing_of_a_dead_lessee_is_left_once_its_orphans_are_back() {
    let _env = TestEnv::new();
    start();
    let me = Pid::current();
    let mut b = Worker::start();
    // Attach A's own table first: its segment stays for good.
    shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
    let baseline = support::fd_count("self") - pooled().0;
    let targets_before = support::fd_targets("self");

    let theirs = inodes_of(&hand_over(&mut b, 0..K));
    let lending = support::fd_count("self");
    assert!(
        lending >= baseline + K as usize + 2,
        "lending {K} blocks to B costs A {lending} - {baseline} descriptors: expected a memfd \
         each, B's pidfd and the channel"
    );
    b.kill();

    let (own, inodes) = own_rounds(100, 4 * K, &theirs);
    let back = inodes.iter().filter(|i| theirs.contains(i)).count();
    assert!(back > 0, "none of B's blocks came back: {inodes:?}");
    free_own(own);
    // Everything that is not pooled is gone again.
    let pooled_now = pooled().0;
    let now = support::fd_count("self");
    assert_eq!(
        now,
        baseline + pooled_now,
        "A holds {now} descriptors, {pooled_now} of them pooled blocks, {baseline} others before \
         B got anything:\nbefore: {targets_before:?}\nnow: {:?}",
        support::fd_targets("self")
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A block a third process locked while it was still on its way to the lessee
// ---------------------------------------------------------------------------------------------

/// Fails if the broker calls a block clean although it gave it to another process while it was
/// still on the channel (taken off into its keeping, `Pending`, and handed to C from there):
/// A would then write into memory C still maps. (It found that bug: the broker handed C its
/// `Pending` copy without marking the slot exported.)
#[test]
fn a_block_a_third_process_locked_on_its_way_to_the_lessee_is_never_reused() {
    const ROUNDS: u64 = 6 * K;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut c = Worker::start();
    // B has not looked at its table since: the block waits on the channel when C asks for it,
    // and the broker takes it off for C.
    let h0 = alloc_block(0, b.pid);
    let x = c.lock_foreign(h0, b.pid, 0);
    assert_eq!(b.lock_keep(h0, 0), x, "B and C hold different blocks");
    let given = hand_over(&mut b, 1..K);
    let others = inodes_of(&given);
    b.kill();

    let (own, inodes) = own_rounds(100, ROUNDS, &HashSet::new());
    assert!(
        !inodes.contains(&x),
        "A reused memfd {x}, which C locked on its way to B and still maps: {inodes:?}"
    );
    let back = inodes.iter().filter(|i| others.contains(i)).count();
    assert!(
        back > 0,
        "none of B's other blocks came back either, so the check above proves nothing: {inodes:?}"
    );
    c.check_unlock(h0, 0);
    free_own(own);
    c.finish();
}
