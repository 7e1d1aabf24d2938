//! Races between a table's owner, which changes its own table without asking the broker, and
//! another process, whose calls on that table go through the broker: thousands of rounds each,
//! two real processes started together through a shared-memory barrier.
//!
//! - Of two racing frees of one handle, exactly one succeeds.
//! - A lock that starts after a free returned fails; one that succeeds shows the right bytes.
//! - A block another process puts into our table can be locked by us as soon as we learn its
//!   handle, even while we fill and empty our own table at the same time.
//! - A block another process sent into our table over its channel (a leased value) can be locked
//!   at once by a third process through the broker while we take it off the channel ourselves, and
//!   of our free and a third process's free of it exactly one succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestEnv;
use shalloc::{Error, Handle, Pid};

/// Words both processes see: an anonymous shared mapping made before `fork`.
#[derive(Clone, Copy)]
struct Shared(&'static [AtomicU64; 8]);

const ROUND: usize = 0;
const HANDLE: usize = 1;
const RESULT: usize = 2;
const DONE: usize = 3;
const AT_NS: usize = 4;
const THIRD_DONE: usize = 5;
const THIRD_RESULT: usize = 6;

impl Shared {
    fn new() -> Shared {
        // SAFETY: a fresh anonymous shared mapping; it is never unmapped (it lives as long as the
        // test process and the child it forks), and AtomicU64 may be all zero bytes.
        let words = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            &*(p as *const [AtomicU64; 8])
        };
        Shared(words)
    }

    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::SeqCst)
    }

    fn set(&self, i: usize, v: u64) {
        self.0[i].store(v, Ordering::SeqCst)
    }

    /// Spins until word `i` is `v`; fails after 10 s (the other process died or hung).
    fn wait_for(&self, i: usize, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.get(i) != v {
            assert!(Instant::now() < deadline, "word {i} never became {v}");
            // Three processes and the broker share two CPUs here: a waiter must give way.
            std::thread::yield_now();
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only to `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Busy-waits a pseudo-random 0–120 µs, so that each side wins some rounds.
fn jitter(round: u64) {
    let micros = (round.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) * 2;
    let until = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Waits a pseudo-random 0–254 µs, giving the CPU away meanwhile: for a race between a call
/// without a round trip (microseconds) and one through the broker (tens of microseconds, more
/// when the other process shares our CPU and must wait for us to yield), so that each side wins
/// some rounds.
fn yielding_jitter(round: u64) {
    let micros = (round.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) * 2;
    let until = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < until {
        std::thread::yield_now();
    }
}

fn bytes_of(round: u64) -> [u8; 8] {
    round.to_le_bytes()
}

fn handle(raw: u64) -> Handle {
    Handle::from_raw(raw as u32).expect("a handle")
}

const ROUNDS: u64 = 5_000;

/// Starts the broker and forks the other process, which runs `each` for every round as soon as
/// this process opens it (`ROUND`), then marks it done (`DONE`). Returns the shared words and the
/// child's pid.
fn partner(rounds: u64, each: impl Fn(Shared, u64)) -> (Shared, libc::pid_t) {
    shalloc::broker_pid().unwrap();
    let s = Shared::new();
    let child = common::fork(move || {
        for round in 0..rounds {
            s.wait_for(ROUND, round + 1);
            each(s, round);
            s.set(DONE, round + 1);
        }
        0
    });
    (s, child)
}

/// Waits for the partner to finish all its rounds and exit cleanly.
fn finish(child: libc::pid_t) {
    assert_eq!(common::wait_exit(child, Duration::from_secs(20)), 0);
}

#[test]
fn of_a_local_and_a_remote_free_of_one_handle_exactly_one_succeeds() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let (s, child) = partner(ROUNDS, move |s, _| {
        let ok = shalloc::free(handle(s.get(HANDLE)), me);
        s.set(RESULT, if ok.is_ok() { 2 } else { 1 });
        if let Err(e) = ok {
            assert!(matches!(e, Error::InvalidHandle { .. }), "{e:?}");
        }
    });
    let (mut ours, mut theirs) = (0, 0);
    for round in 0..ROUNDS {
        let h = shalloc::alloc(&bytes_of(round), me).unwrap();
        s.set(HANDLE, u64::from(h.as_raw()));
        s.set(ROUND, round + 1);
        jitter(round);
        let mine = shalloc::free(h, me);
        s.wait_for(DONE, round + 1);
        let remote_ok = s.get(RESULT) == 2;
        assert!(
            mine.is_ok() != remote_ok,
            "round {round}: local free {mine:?}, remote free ok: {remote_ok}"
        );
        if let Err(e) = &mine {
            assert!(matches!(e, Error::InvalidHandle { .. }), "{e:?}");
            theirs += 1;
        } else {
            ours += 1;
        }
        // Closed for everyone now.
        assert!(matches!(
            shalloc::lock(h, me),
            Err(Error::InvalidHandle { .. })
        ));
    }
    finish(child);
    eprintln!("{ROUNDS} rounds: the owner's free won {ours}, the other process's {theirs}");
    assert!(
        ours > 0 && theirs > 0,
        "the race never went both ways ({ours} / {theirs}): the test proves nothing"
    );
}

#[test]
fn a_lock_that_starts_after_a_remote_free_returned_fails() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let (s, child) = partner(ROUNDS, move |s, _| {
        shalloc::free(handle(s.get(HANDLE)), me).unwrap();
        s.set(AT_NS, now_ns());
    });
    let (mut locked, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let h = shalloc::alloc(&bytes_of(round), me).unwrap();
        s.set(HANDLE, u64::from(h.as_raw()));
        s.set(ROUND, round + 1);
        yielding_jitter(round);
        let started = now_ns();
        let view = shalloc::lock(h, me);
        s.wait_for(DONE, round + 1);
        let freed = s.get(AT_NS);
        match view {
            Ok(view) => {
                assert!(
                    started < freed,
                    "round {round}: a lock that started {} ns after the free returned succeeded",
                    started - freed
                );
                assert_eq!(view.to_vec(), bytes_of(round), "round {round}: wrong bytes");
                locked += 1;
            }
            Err(Error::InvalidHandle { .. }) => refused += 1,
            Err(e) => panic!("round {round}: {e:?}"),
        }
    }
    finish(child);
    eprintln!("{ROUNDS} rounds: {locked} locks came first, {refused} came after the free");
    assert!(
        locked > 0 && refused > 0,
        "the race never went both ways ({locked} / {refused})"
    );
}

#[test]
fn a_block_another_process_puts_in_our_table_is_ours_at_once_while_we_churn_our_own() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let rounds: u64 = 3_000;
    let (s, child) = partner(rounds, move |s, round| {
        jitter(round);
        let h = shalloc::alloc(&bytes_of(round), me).unwrap();
        s.set(HANDLE, u64::from(h.as_raw()));
    });
    let mut churned = 0u64;
    for round in 0..rounds {
        s.set(ROUND, round + 1);
        // Our own allocations race the broker for slots of our table meanwhile.
        while s.get(DONE) != round + 1 {
            let own = shalloc::alloc(b"own", me).unwrap();
            shalloc::free(own, me).unwrap();
            churned += 1;
        }
        let h = handle(s.get(HANDLE));
        let view = shalloc::lock(h, me).unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(view.to_vec(), bytes_of(round));
        drop(view);
        shalloc::free(h, me).unwrap();
        assert!(shalloc::free(h, me).is_err(), "a second free succeeded");
    }
    finish(child);
    eprintln!("{rounds} rounds, {churned} own allocations and frees beside them");
    let listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(listing.broker.handles, 0, "{listing:?}");
}

/// Forks the allocator and the third process of a three-party round: the allocator puts
/// `bytes_of(round)` into our table (over its leased channel: we attached first) as soon as the
/// round opens, then the third process runs `third` on the handle. Returns their pids.
fn allocator_and_third(
    rounds: u64,
    third: impl Fn(Shared, Handle, u64) -> bool,
) -> (Shared, [libc::pid_t; 2]) {
    let me = Pid::current();
    // Attach our table, so that the allocator gets a lease of its values.
    shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
    let (s, allocator) = partner(rounds, move |s, round| {
        let h = shalloc::alloc(&bytes_of(round), me).unwrap();
        s.set(HANDLE, u64::from(h.as_raw()));
    });
    let third = common::fork(move || {
        for round in 0..rounds {
            s.wait_for(DONE, round + 1);
            jitter(round.wrapping_mul(7));
            let ok = third(s, handle(s.get(HANDLE)), round);
            s.set(THIRD_RESULT, if ok { 2 } else { 1 });
            s.set(THIRD_DONE, round + 1);
        }
        0
    });
    (s, [allocator, third])
}

#[test]
fn a_block_sent_over_a_channel_is_there_for_a_third_process_while_its_owner_takes_it() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let rounds: u64 = 2_000;
    let (s, children) = allocator_and_third(rounds, move |_, h, round| {
        let view =
            shalloc::lock_read_only(h, me).unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        view.to_vec() == bytes_of(round)
    });
    for round in 0..rounds {
        s.set(ROUND, round + 1);
        s.wait_for(DONE, round + 1);
        jitter(round);
        let h = handle(s.get(HANDLE));
        let view = shalloc::lock(h, me).unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(view.to_vec(), bytes_of(round), "round {round}");
        drop(view);
        s.wait_for(THIRD_DONE, round + 1);
        assert_eq!(
            s.get(THIRD_RESULT),
            2,
            "round {round}: the third process saw wrong bytes"
        );
        shalloc::free(h, me).unwrap();
    }
    for child in children {
        finish(child);
    }
    let listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(listing.broker.handles, 0, "{listing:?}");
}

#[test]
fn of_our_free_and_a_third_processs_free_of_a_block_on_its_channel_exactly_one_succeeds() {
    let _env = TestEnv::new();
    let me = Pid::current();
    let rounds: u64 = 2_000;
    let (s, children) = allocator_and_third(rounds, move |_, h, _| match shalloc::free(h, me) {
        Ok(()) => true,
        Err(Error::InvalidHandle { .. }) => false,
        Err(e) => panic!("{e:?}"),
    });
    let (mut ours, mut theirs) = (0, 0);
    for round in 0..rounds {
        s.set(ROUND, round + 1);
        s.wait_for(DONE, round + 1);
        jitter(round);
        let h = handle(s.get(HANDLE));
        let mine = shalloc::free(h, me);
        s.wait_for(THIRD_DONE, round + 1);
        let third_ok = s.get(THIRD_RESULT) == 2;
        assert!(
            mine.is_ok() != third_ok,
            "round {round}: our free {mine:?}, the third process's free ok: {third_ok}"
        );
        match mine {
            Ok(()) => ours += 1,
            Err(Error::InvalidHandle { .. }) => theirs += 1,
            Err(e) => panic!("round {round}: {e:?}"),
        }
        assert!(matches!(
            shalloc::lock(h, me),
            Err(Error::InvalidHandle { .. })
        ));
    }
    for child in children {
        finish(child);
    }
    eprintln!("{rounds} rounds: our free won {ours}, the third process's {theirs}");
    assert!(
        ours > 0 && theirs > 0,
        "the race never went both ways ({ours} / {theirs})"
    );
    let listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(listing.broker.handles, 0, "{listing:?}");
}
