//! Recycling across processes: a block process A put into process B's table over their channel
//! (`alloc(data, b)`, sent straight to B) comes back to A once B closed it, and A reuses it — for
//! B only. Real processes: the test process is A; B (and a third process C) are forked workers
//! that attached their own tables (so A's allocations into them go over a channel) and obey
//! commands sent over pipes.
//!
//! 1. A block handed to B comes back and is reused for B: over 50 rounds nearly every block B gets
//!    is a memfd it already had, and B always sees exactly A's new bytes, with zeros past them to
//!    the end of the memfd — although B, as a lessee may, scribbled over the whole memfd before
//!    freeing it (a block back from a lessee is refilled as if every byte were written).
//! 2. A block back from B is reused only for B: allocations of the same class into A's own table
//!    and into C's table never get it (while it sits in A's pool), the next one into B does.
//! 3. A block that C locked through B's table (the broker reopened it from B for C) never comes
//!    back, in any later round, while blocks nobody else locked keep being reused; and C's view of
//!    it keeps its bytes through all those rounds.
//! 4. B writing forged frames on its end of the channel (false returns, returns of values never
//!    lent, garbage, oversized and empty frames, frames carrying descriptors) harms nobody but B:
//!    A keeps sending B correct blocks, reads every frame off the channel and keeps no descriptor
//!    that came with one. A false return of a block B still maps does let A reuse that block for
//!    B — the design: a lie shows the liar only what is put into its own table — and that reuse is
//!    also this test's proof that the forged frames reached A.
//!    A return under the right handle but another tag frees nothing (handle values come round
//!    again; the tag says which delivery came back).
//! 5. `pool::set_limit(Some(0))` turns recycling off: every block into B is a new memfd exactly its
//!    size; with the limit lifted, reuse starts again (the positive control).
//!
//! How reuse is seen: a block's memfd shows in `/proc/self/fd` as `/memfd:shalloc (deleted)`; B
//! finds the inode of the block it holds from its view's mapping in `/proc/self/maps`, and reads
//! (and writes) the memfd past the block's size through `/proc/self/fd/N`. Memfd inodes are not
//! handed out again while the test runs, so the same inode means the same memfd.
//!
//! A keeps its pooled blocks for `SHALLOC_POOL_IDLE_MS`: each test sets it to a minute before A's
//! first shalloc call, so that a slow machine does not turn reuse into fresh blocks.

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
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use common::TestEnv;
use procs::{Child, End, fork_with_channel};
use shalloc::pool::{pooled, set_limit};
use shalloc::{Handle, Pid, View};
use shalloc_protocol::block::class_bytes;
use shalloc_protocol::wire::{MAX_FRAME, Returned, TAG_WANTS_RETURN};

// ---------------------------------------------------------------------------------------------
// Blocks: sizes and bytes
// ---------------------------------------------------------------------------------------------

/// The size class every block of these tests is in (sizes from 56 KiB + 1 to 64 KiB).
const CLASS: u64 = 64 << 10;

use handoff_blocks::BLOCK_LINK;

/// The byte a lessee scribbles over its memfd before freeing it.
const JUNK: u8 = 0xa5;

/// The size of round `round`'s block: varying within [`CLASS`], so that a smaller block follows a
/// larger one in the same memfd and the bytes between must have been zeroed.
fn size_of(round: u64) -> u64 {
    let size = CLASS - (round * 7919) % 8_000;
    debug_assert_eq!(class_bytes(size), CLASS);
    size
}

/// Keeps this process's pool warm for a minute, starts the broker and checks the pool is empty.
fn start() {
    support::keep_pool_warm();
    support::start_with_empty_pool();
}

// ---------------------------------------------------------------------------------------------
// The worker: B or C, a process with its own table that obeys the test
// ---------------------------------------------------------------------------------------------

/// Commands to a worker, each followed by its arguments (all `u64`).
const ROUND: u64 = 1; // handle, seed, size, scribble → inode, memfd length
const LOCK_KEEP: u64 = 2; // handle, seed, size → inode, memfd length
const FREE: u64 = 3; // handle → 0
const LOCK_FOREIGN: u64 = 4; // handle, owner, seed, size → inode
const CHECK_UNLOCK: u64 = 5; // handle, seed, size → 0
const FORGE: u64 = 6; // held handle → frames sent, of which with descriptors
const OUTQ: u64 = 7; // → bytes B sent on its channel end that A has not read yet
const EXIT: u64 = 8;
const FORGE_TAGS: u64 = 9; // held handle, first tag, count → returns sent
const BLOCKS: u64 = 10; // inode → 512-byte blocks of the memfd we hold with that inode

const READY: u64 = 0xbeef;

fn send(end: &mut End, values: &[u64]) {
    support::send_u64s(end.w.as_mut().expect("write end open"), values);
}

fn recv(end: &mut End, n: usize) -> Vec<u64> {
    support::recv_u64s(&mut end.r, n)
}

/// The inodes of the block memfds this process holds.
fn block_inodes() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect::<Vec<_>>()
        .into_iter()
        .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.as_os_str() == BLOCK_LINK))
        .filter_map(|p| Some(std::fs::metadata(p).ok()?.ino()))
        .collect()
}

/// Locks `h` in our own table, checks it is block `seed`, and checks through the descriptor that
/// every byte of the memfd past its size is zero. Returns the view and the memfd.
fn lock_and_check(h: u64, seed: u64, size: u64, write: bool) -> (View, Memfd) {
    let me = Pid::current();
    let view = shalloc::lock(handle(h), me)
        .unwrap_or_else(|e| panic!("lessee: lock {h:#x} (block {seed}): {e:?}"));
    check_view(&view, seed, size, "lessee");
    let memfd = open_block(view_inode(&view), write);
    assert!(memfd.len >= size, "memfd shorter than its block");
    let mut tail = vec![0u8; (memfd.len - size) as usize];
    memfd.file.read_exact_at(&mut tail, size).unwrap();
    if let Some(at) = tail.iter().position(|&b| b != 0) {
        panic!(
            "lessee: block {seed} ({size} bytes, memfd {} long, inode {}) has {:#x} at {} past \
             its size: an old block's bytes",
            memfd.len,
            memfd.ino,
            tail[at],
            size as usize + at
        );
    }
    (view, memfd)
}

/// The worker: attaches its table (so that blocks for it come over a channel), then obeys.
fn worker(mut end: End) -> i32 {
    let me = Pid::current();
    shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
    send(&mut end, &[READY]);
    let mut views: HashMap<u64, View> = HashMap::new();
    loop {
        match recv(&mut end, 1)[0] {
            ROUND => {
                let a = recv(&mut end, 4);
                let (h, seed, size, scribble) = (a[0], a[1], a[2], a[3] != 0);
                let (view, memfd) = lock_and_check(h, seed, size, scribble);
                if scribble {
                    // A lessee may write anywhere in the memfd it was given, past the size too.
                    let junk = vec![JUNK; memfd.len as usize];
                    memfd.file.write_all_at(&junk, 0).unwrap();
                }
                let reply = [memfd.ino, memfd.len];
                drop((view, memfd));
                shalloc::free(handle(h), me).unwrap();
                send(&mut end, &reply);
            }
            LOCK_KEEP => {
                let a = recv(&mut end, 3);
                let (view, memfd) = lock_and_check(a[0], a[1], a[2], false);
                views.insert(a[0], view);
                send(&mut end, &[memfd.ino, memfd.len]);
            }
            FREE => {
                let h = recv(&mut end, 1)[0];
                views.remove(&h);
                shalloc::free(handle(h), me).unwrap();
                send(&mut end, &[0]);
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
            CHECK_UNLOCK => {
                let a = recv(&mut end, 3);
                let view = views.remove(&a[0]).expect("a view kept");
                check_view(&view, a[1], a[2], "third process, later");
                drop(view);
                send(&mut end, &[0]);
            }
            FORGE => {
                let held = recv(&mut end, 1)[0];
                let (sent, with_fds) = forge(u32::try_from(held).unwrap());
                send(&mut end, &[sent, with_fds]);
            }
            BLOCKS => {
                let ino = recv(&mut end, 1)[0];
                let blocks = open_block(ino, false).file.metadata().unwrap().blocks();
                send(&mut end, &[blocks]);
            }
            FORGE_TAGS => {
                let a = recv(&mut end, 3);
                let held = u32::try_from(a[0]).unwrap();
                let mut sent = 0;
                for tag in a[1]..a[1] + a[2] {
                    let tag = u32::try_from(tag).unwrap() | TAG_WANTS_RETURN;
                    let frame = Returned { handle: held, tag }.encode();
                    sent += u64::from(send_frame(channel_end(), frame.as_bytes(), &[]));
                }
                send(&mut end, &[sent]);
            }
            OUTQ => {
                let outq = outq(channel_end());
                send(&mut end, &[outq]);
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

    /// Has the worker lock `h` (block `seed`), check it, scribble over its memfd, unlock and free
    /// it: the block's (inode, memfd length).
    fn round(&mut self, h: Handle, seed: u64, scribble: bool) -> (u64, u64) {
        let args = [
            ROUND,
            u64::from(h.as_raw()),
            seed,
            size_of(seed),
            u64::from(scribble),
        ];
        send(&mut self.end, &args);
        let r = recv(&mut self.end, 2);
        (r[0], r[1])
    }

    /// Has the worker lock `h` (block `seed`) in its table and keep the view: the block's inode.
    fn lock_keep(&mut self, h: Handle, seed: u64) -> u64 {
        send(
            &mut self.end,
            &[LOCK_KEEP, u64::from(h.as_raw()), seed, size_of(seed)],
        );
        recv(&mut self.end, 2)[0]
    }

    /// Has the worker drop its view of `h`, if any, and free it in its table.
    fn free(&mut self, h: Handle) {
        send(&mut self.end, &[FREE, u64::from(h.as_raw())]);
        assert_eq!(recv(&mut self.end, 1)[0], 0);
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

    /// Has the worker check that its view of `h` still shows block `seed`, then drop it.
    fn check_unlock(&mut self, h: Handle, seed: u64) {
        send(
            &mut self.end,
            &[CHECK_UNLOCK, u64::from(h.as_raw()), seed, size_of(seed)],
        );
        assert_eq!(recv(&mut self.end, 1)[0], 0);
    }

    fn forge(&mut self, held: Handle) -> (u64, u64) {
        send(&mut self.end, &[FORGE, u64::from(held.as_raw())]);
        let r = recv(&mut self.end, 2);
        (r[0], r[1])
    }

    /// The 512-byte blocks of the memfd with inode `ino` that the worker holds.
    fn blocks(&mut self, ino: u64) -> u64 {
        send(&mut self.end, &[BLOCKS, ino]);
        recv(&mut self.end, 1)[0]
    }

    /// Has the worker send returns of `held` under tags `first..first + count`: how many went.
    fn forge_tags(&mut self, held: Handle, first: u64, count: u64) -> u64 {
        send(
            &mut self.end,
            &[FORGE_TAGS, u64::from(held.as_raw()), first, count],
        );
        recv(&mut self.end, 1)[0]
    }

    fn outq(&mut self) -> u64 {
        send(&mut self.end, &[OUTQ]);
        recv(&mut self.end, 1)[0]
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

// ---------------------------------------------------------------------------------------------
// Forged frames, written by the lessee on its end of the channel
// ---------------------------------------------------------------------------------------------

/// Writes forged frames on this process's channel end, the false return of `held` (a block this
/// process still holds and maps) first: returns of values never lent (none of them a handle
/// value A could have lent), garbage, damaged and oversized returns, empty frames, and frames
/// carrying descriptors. Stops when the channel is full. Returns (frames sent, of which carried
/// descriptors).
fn forge(held: u32) -> (u64, u64) {
    let sock = channel_end();
    let memfd = rustix::fs::memfd_create("forged", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    // The sender tags the memfds it lends 0, 1, 2, … (with the wants-return bit): a return of `h`
    // under each early tag, so that one of the lies about `held` names its real delivery.
    let returned_as = |handle: u32, n: u32| {
        let tag = n | TAG_WANTS_RETURN;
        Returned { handle, tag }.encode().as_bytes().to_vec()
    };
    let returned = |h: u32| returned_as(h, 0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut frames: Vec<(Vec<u8>, Vec<BorrowedFd<'_>>)> = (0..64)
        .map(|tag| (returned_as(held, tag), vec![]))
        .collect();
    // Never lent: not handle values (odd, 0) or values at the far end of the range.
    for h in [0, 1, 2, 3, 5, 7, u32::MAX, u32::MAX - 3, 0x7fff_fff1] {
        frames.push((returned(h), vec![]));
    }
    for i in 0..40u32 {
        frames.push((returned(2 * i + 1), vec![]));
    }
    for len in [1, 3, 7, 8, 15, 16, 17, 31, 64, 100, 1000, MAX_FRAME] {
        frames.push((random(len), vec![]));
    }
    let good = returned(held);
    for i in 0..good.len() {
        let mut damaged = good.clone();
        damaged[i] ^= 0xff;
        frames.push((damaged, vec![]));
        frames.push((good[..i].to_vec(), vec![]));
    }
    let mut long = good.clone();
    long.extend_from_slice(&[0; 9]);
    frames.push((long, vec![]));
    frames.push((random(MAX_FRAME + 1), vec![]));
    frames.push((random(4 * MAX_FRAME), vec![]));
    frames.push((Vec::new(), vec![]));
    // Descriptors: a return carrying one, garbage carrying some, more than a frame may carry.
    for i in 0..20u32 {
        frames.push((returned(held), vec![memfd.as_fd()]));
        frames.push((returned(2 * i + 1), vec![pipe_r.as_fd(), pipe_w.as_fd()]));
        frames.push((
            random(12),
            vec![memfd.as_fd(), pipe_r.as_fd(), pipe_w.as_fd()],
        ));
        frames.push((random(24), vec![memfd.as_fd(); 6]));
        frames.push((Vec::new(), vec![memfd.as_fd()]));
    }
    frames.push((Vec::new(), vec![]));
    let (mut sent, mut with_fds) = (0, 0);
    for (bytes, fds) in &frames {
        if !send_frame(sock, bytes, fds) {
            break;
        }
        sent += 1;
        with_fds += u64::from(!fds.is_empty());
    }
    (sent, with_fds)
}

// ---------------------------------------------------------------------------------------------
// 1. A block comes back from its lessee and is reused for it
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_handed_to_another_process_comes_back_and_is_reused_for_it() {
    const ROUNDS: u64 = 50;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut seen = HashSet::new();
    let mut reused = 0;
    for round in 0..ROUNDS {
        let h = alloc_block(round, b.pid);
        let (ino, len) = b.round(h, round, true);
        assert_eq!(len, CLASS, "round {round}: a block is made a class long");
        if round >= 5 && seen.contains(&ino) {
            reused += 1;
        }
        seen.insert(ino);
    }
    eprintln!(
        "{ROUNDS} rounds: {} distinct memfds, {reused} of rounds 5.. reused one",
        seen.len()
    );
    // A reads B's returns on its next send, so two blocks take turns; allow for a few misses.
    assert!(
        reused * 5 >= (ROUNDS - 5) * 4,
        "only {reused} of {} rounds reused a block B returned ({} distinct memfds)",
        ROUNDS - 5,
        seen.len()
    );
    b.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Only for its lessee
// ---------------------------------------------------------------------------------------------

#[test]
fn a_returned_block_is_reused_only_for_its_lessee() {
    let _env = TestEnv::new();
    start();
    let me = Pid::current();
    let mut b = Worker::start();
    let mut c = Worker::start();
    // Round 0's block goes back to A when A next sends to B (round 1): then it waits in A's pool,
    // for B only.
    let h0 = alloc_block(0, b.pid);
    let (x, _) = b.round(h0, 0, true);
    let h1 = alloc_block(1, b.pid);
    let (y, _) = b.round(h1, 1, true);
    assert_ne!(
        x, y,
        "round 1 cannot reuse round 0's block: A had not read its return yet"
    );
    assert!(
        block_inodes().contains(&x),
        "B's returned block {x} is not among A's memfds: {:?}",
        support::fd_targets("self")
    );
    assert_eq!(pooled(), (1, CLASS), "exactly B's returned block is pooled");

    // Into A's own table: never B's block. The handles stay open, so that their blocks do not go
    // to the pool (from where B may get them: A's own blocks may go anywhere).
    let mut own = Vec::new();
    for seed in 10..14 {
        let h = alloc_block(seed, me);
        let view = shalloc::lock(h, me).unwrap();
        check_view(&view, seed, size_of(seed), "A's own block");
        let ino = view_inode(&view);
        assert_ne!(ino, x, "A's own block {seed} got the block B returned");
        own.push(h);
    }
    // Into C's table: never B's block.
    for seed in 20..24 {
        let h = alloc_block(seed, c.pid);
        let (ino, _) = c.round(h, seed, true);
        assert_ne!(ino, x, "C's block {seed} got the block B returned");
    }
    assert!(
        block_inodes().contains(&x),
        "B's returned block left A's pool"
    );

    // Into B's table: B's block.
    let h2 = alloc_block(2, b.pid);
    let (ino, len) = b.round(h2, 2, false);
    assert_eq!(
        (ino, len),
        (x, CLASS),
        "B's next block is not the one it returned"
    );

    for h in own {
        shalloc::free(h, me).unwrap();
    }
    b.finish();
    c.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Locked by a third process: never back
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_a_third_process_locked_through_the_lessees_table_never_comes_back() {
    const LATER: u64 = 14;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut c = Worker::start();
    // B takes the block into its table first, so that C's lock has the broker reopen it from B.
    let h0 = alloc_block(0, b.pid);
    let x = b.lock_keep(h0, 0);
    assert_eq!(c.lock_foreign(h0, b.pid, 0), x, "C locked another block");
    b.free(h0);

    let mut later = Vec::new();
    for round in 1..=LATER {
        let h = alloc_block(round, b.pid);
        let (ino, _) = b.round(h, round, true);
        assert_ne!(
            ino, x,
            "round {round}: B got the block C locked through its table (and still maps)"
        );
        later.push(ino);
    }
    // Positive control: blocks nobody else locked do come back and are reused.
    let distinct: HashSet<u64> = later.iter().copied().collect();
    eprintln!(
        "{LATER} later rounds used {} distinct blocks",
        distinct.len()
    );
    assert!(
        distinct.len() <= 4,
        "{LATER} later rounds used {} distinct blocks: no reuse, so the check above proves nothing",
        distinct.len()
    );
    // C's view still shows its block: nothing was written into it.
    c.check_unlock(h0, 0);
    b.finish();
    c.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Forged frames from the lessee
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_and_false_returns_on_the_channel_change_nothing() {
    const WARM_UP: u64 = 6;
    const HONEST: u64 = 60;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    for round in 0..WARM_UP {
        let h = alloc_block(round, b.pid);
        b.round(h, round, true);
    }
    // B keeps this one, mapped, and then claims it gave it back.
    let held = alloc_block(100, b.pid);
    let held_ino = b.lock_keep(held, 100);
    let fds_before = support::fd_count("self");
    let targets_before = support::fd_targets("self");

    let (sent, with_fds) = b.forge(held);
    eprintln!("B forged {sent} frames, {with_fds} carrying descriptors");
    assert!(
        sent >= 100 && with_fds >= 50,
        "B could forge only {sent} frames ({with_fds} with descriptors)"
    );

    let mut got_held = None;
    for round in WARM_UP..WARM_UP + HONEST {
        let h = alloc_block(round, b.pid);
        let (ino, _) = b.round(h, round, true);
        if ino == held_ino && got_held.is_none() {
            got_held = Some(round);
        }
    }
    eprintln!("the falsely returned block came back to B in round {got_held:?}");
    // The false return was believed: the liar got its own block back while still mapping it,
    // which shows the forged frames did reach A.
    assert!(
        got_held.is_some(),
        "the block B falsely returned was never reused for B: did the forged frames reach A?"
    );
    // One more block B keeps: A's send reads what B returned last, so nothing B sent is left.
    let last = alloc_block(1000, b.pid);
    b.lock_keep(last, 1000);
    assert_eq!(b.outq(), 0, "A left frames of B's unread on the channel");
    let fds_after = support::fd_count("self");
    assert!(
        fds_after <= fds_before + 10,
        "A holds {fds_after} descriptors, {fds_before} before B's forged frames:\nbefore: \
         {targets_before:?}\nafter: {:?}",
        support::fd_targets("self")
    );
    b.free(last);
    b.free(held);
    b.finish();
}

/// A return names the delivery by its tag as well as its handle: a value can be leased again
/// while the receiver still maps the block it named before (after the handle space wraps), so a
/// return of the right handle under any other tag must not free the block for reuse. (Matching
/// the handle alone, A would reuse the block B still maps.)
#[test]
fn a_return_under_another_tag_frees_nothing() {
    const WARM_UP: u64 = 4;
    const ROUNDS: u64 = 30;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    for round in 0..WARM_UP {
        let h = alloc_block(round, b.pid);
        b.round(h, round, true);
    }
    let held = alloc_block(100, b.pid);
    let held_ino = b.lock_keep(held, 100);
    // A tags each memfd it lends from a counter that starts at 0 (the same tag each time the memfd
    // goes again): this process made a handful, so tags from 1000 on are all wrong.
    let sent = b.forge_tags(held, 1000, 60);
    assert_eq!(sent, 60, "B could not send its returns");
    for round in WARM_UP..WARM_UP + ROUNDS {
        let h = alloc_block(round, b.pid);
        let (ino, _) = b.round(h, round, true);
        assert_ne!(
            ino, held_ino,
            "round {round}: the block B still maps came back to it after returns under wrong tags"
        );
    }
    // The positive control: one of the first 64 tags is its true one, which does free it, and it
    // comes back to B.
    assert_eq!(b.forge_tags(held, 0, 64), 64);
    let mut back = false;
    for round in 200..200 + ROUNDS {
        let h = alloc_block(round, b.pid);
        back |= b.round(h, round, true).0 == held_ino;
    }
    assert!(
        back,
        "the return under the block's true tag was not believed"
    );
    b.free(held);
    b.finish();
}

/// Fails if a block that came back from B is let go with its pages while B keeps a mapping of it
/// for its return: B would keep the pages alive until its next call.
#[test]
fn a_returned_block_let_go_takes_its_pages_with_it() {
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    let mut inodes = HashSet::new();
    for round in 0..6 {
        let h = alloc_block(round, b.pid);
        inodes.insert(b.round(h, round, false).0);
    }
    // The last one B got is still in B's keeping (its mapping kept for the block's return).
    let h = alloc_block(100, b.pid);
    let (kept, _) = b.round(h, 100, false);
    // One more send reads B's last return, so that every block is back in our pool.
    let h = alloc_block(101, b.pid);
    b.round(h, 101, false);
    assert!(
        b.blocks(kept) > 0,
        "B's kept memfd has no pages to begin with"
    );
    assert!(shalloc::pool::trim() > 0, "nothing was pooled");
    assert_eq!(
        b.blocks(kept),
        0,
        "a block let go still has its pages, held by B's kept mapping"
    );
    b.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Recycling off
// ---------------------------------------------------------------------------------------------

#[test]
fn recycling_off_by_set_limit_sends_fresh_blocks() {
    const ROUNDS: u64 = 20;
    let _env = TestEnv::new();
    start();
    let mut b = Worker::start();
    set_limit(Some(0));
    let mut seen = HashSet::new();
    for round in 0..ROUNDS {
        let h = alloc_block(round, b.pid);
        let (ino, len) = b.round(h, round, true);
        assert!(
            seen.insert(ino),
            "round {round}: B got a block it had before"
        );
        assert_eq!(
            len,
            size_of(round),
            "round {round}: with recycling off a block is exactly its size"
        );
    }
    assert_eq!(pooled(), (0, 0), "nothing is pooled with recycling off");

    // Positive control: with the limit lifted, the same rounds reuse B's blocks.
    set_limit(None);
    let mut again = HashSet::new();
    let mut reused = 0;
    for round in ROUNDS..2 * ROUNDS {
        let h = alloc_block(round, b.pid);
        let (ino, _) = b.round(h, round, true);
        reused += u64::from(!again.insert(ino));
    }
    assert!(
        reused >= ROUNDS / 2,
        "with recycling back on only {reused} of {ROUNDS} rounds reused a block"
    );
    b.finish();
}
