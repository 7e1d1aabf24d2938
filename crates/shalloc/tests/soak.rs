//! Soak: many cycles of mixed sizes (64 B .. 1 MiB) against the real broker, in the same process
//! and handed off to a forked child both ways (into the child's table, and from our table for the
//! child to answer in), with a short-lived child every 500 cycles that dies holding a block. The
//! broker's descriptor count and resident memory are sampled at quiet points and must not grow
//! after a warm-up.
//!
//! The bounded run (12,000 cycles, about 9 s in a debug build) is part of the normal suite. The
//! full run of 10^6 cycles:
//!
//! ```text
//! SHALLOC_SOAK_CYCLES=1000000 cargo nextest run -p shalloc --test soak --release --profile soak
//! ```
//!
//! (add `--no-capture` to watch the samples). It takes about 5 minutes here (~270 µs a cycle in a
//! release build); the `soak` profile in `.config/nextest.toml` allows that, where the default
//! profile ends any test after 120 s.
//!
//! What "no growth" means, precisely: a sample is taken every `cycles / 40` cycles at a quiet point
//! (the broker lists no table, no handle and only our two connections, and a fence round trip has
//! made sure it closed the descriptor of its last reply). Before the first sample, every size class
//! went once through every kind of cycle; the first 10 of the 40 samples are the warm-up. After it:
//! - the broker's descriptor count never exceeds the warm-up's maximum. At a quiet point the
//!   broker holds a fixed set (stdio, listener, epoll, signalfd, log, lock file, spare, and two
//!   connections with their pidfds), so one descriptor more is a leak: no slack;
//! - the broker's last `VmRSS` sample is at most the warm-up's maximum + 256 KiB. The slack covers
//!   allocator noise (heap pages a freed map leaves resident); a leak of 1 byte per cycle exceeds
//!   it within 262,144 cycles, of 32 bytes (one small map entry) within 8,192;
//! - this process's last `VmRSS` is at most its warm-up maximum + 2 MiB (it copies blocks of up to
//!   1 MiB, and its heap keeps such chunks resident), and its descriptor count never changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use std::time::{Duration, Instant};

use common::TestEnv;
use procs::End;
use shalloc::{Handle, Pid, alloc, broker_pid, free, live_views, lock};
use support::Pattern;

/// The environment variable that sets the number of cycles.
const CYCLES_ENV: &str = "SHALLOC_SOAK_CYCLES";
/// Cycles of the bounded run.
const DEFAULT_CYCLES: u64 = 12_000;
/// Samples over a run, and how many of them are warm-up.
const SAMPLES: u64 = 40;
const WARM_UP_SAMPLES: usize = 10;
/// Allowed growth of the broker's resident memory after the warm-up, in KiB.
const RSS_SLACK_KIB: u64 = 256;
/// Allowed growth of this process's resident memory after the warm-up, in KiB: two of the largest
/// blocks, as the test copies blocks of up to 1 MiB out of views and the allocator's heap keeps
/// freed chunks of that size (and the fragments beside them) resident.
const OWN_RSS_SLACK_KIB: u64 = 2 * (MAX_SIZE as u64 / 1024);
/// Every this many cycles, a short-lived child receives a block and dies holding it.
const SHORT_LIVED_EVERY: u64 = 500;
const MAX_SIZE: usize = 1 << 20;
/// Offsets into the pattern, so blocks of one size differ.
const OFFSETS: usize = 1 << 16;

/// A hash of the cycle number, for sizes and offsets.
fn mix(n: u64, salt: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Cycle `n`'s block: a size from 64 B to 1 MiB (each power of two equally likely) and the offset
/// of its bytes in the pattern.
fn block_of(n: u64) -> (usize, usize) {
    let base = 64usize << (mix(n, 1) % 15);
    let size = (base - (mix(n, 2) as usize % (base / 2))).clamp(64, MAX_SIZE);
    (size, mix(n, 3) as usize % OFFSETS)
}

/// What the parent tells the hand-off child.
const STOP: u32 = 0;
/// The block is in the child's table: lock it, check it, free it.
const INTO_CHILD: u32 = 1;
/// The block is in the parent's table: lock it through the parent's pid, check it, answer in it.
const FROM_PARENT: u32 = 2;

fn answer(n: u64) -> u8 {
    (n as u8) ^ 0x5A
}

/// The long-lived child the parent hands blocks to.
fn handoff_child(pattern: &Pattern, parent: Pid, mut end: End) -> i32 {
    let me = Pid::current();
    // Connect before the first sample, so that every sample sees both connections.
    broker_pid().unwrap();
    end.send(1);
    loop {
        let kind = end.recv();
        if kind == STOP {
            return 0;
        }
        let h = Handle::from_raw(end.recv()).unwrap();
        let n = u64::from(end.recv());
        let size = end.recv() as usize;
        let offset = end.recv() as usize;
        let owner = if kind == INTO_CHILD { me } else { parent };
        let view = lock(h, owner).unwrap();
        assert_eq!(
            view.to_vec(),
            pattern.slice(offset, size),
            "cycle {n}: bytes"
        );
        if kind == INTO_CHILD {
            drop(view);
            free(h, me).unwrap();
        } else {
            view.write_at(0, &[answer(n)]).unwrap();
        }
        end.send(1);
    }
}

/// What a cycle needs.
struct Ctx<'a> {
    me: Pid,
    /// The hand-off child.
    to: Pid,
    end: &'a mut End,
    pattern: &'a Pattern,
}

/// One cycle: `mode` 0 in this process (alloc, lock, check, unlock, free), 1 into the hand-off
/// child's table (it locks, checks and frees), 2 from our table (the child locks it through our
/// pid, checks it and answers in it; we check the answer and free).
fn one_cycle(ctx: &mut Ctx<'_>, n: u64, mode: u64, size: usize, offset: usize) {
    let me = ctx.me;
    let data = ctx.pattern.slice(offset, size);
    let mut hand_off = |kind: u32, h: Handle| {
        for word in [kind, h.as_raw(), n as u32, size as u32, offset as u32] {
            ctx.end.send(word);
        }
        assert_eq!(ctx.end.recv(), 1);
    };
    match mode {
        0 => {
            let h = alloc(data, me).unwrap();
            let view = lock(h, me).unwrap();
            assert_eq!(view.to_vec(), data, "cycle {n}: bytes");
            drop(view);
            free(h, me).unwrap();
        }
        1 => {
            let h = alloc(data, ctx.to).unwrap();
            hand_off(INTO_CHILD, h);
        }
        _ => {
            let h = alloc(data, me).unwrap();
            hand_off(FROM_PARENT, h);
            let view = lock(h, me).unwrap();
            let mut first = [0u8];
            view.read_at(0, &mut first).unwrap();
            assert_eq!(first[0], answer(n), "cycle {n}: the child's answer");
            drop(view);
            free(h, me).unwrap();
        }
    }
}

/// A child that receives a block into its table and dies holding it (and a view of it).
fn short_lived_child() {
    let (mut doomed, mut doomed_end) = procs::fork_with_channel(|mut end| {
        let h = Handle::from_raw(end.recv()).unwrap();
        let view = lock(h, Pid::current()).unwrap();
        assert_eq!(view.len(), 4096);
        end.send(1);
        0
    });
    let h = alloc(&[7u8; 4096], doomed.pid()).unwrap();
    doomed_end.send(h.as_raw());
    assert_eq!(doomed_end.recv(), 1);
    doomed.expect_success();
}

/// One sample of the broker and of this process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cycle: u64,
    broker_fds: usize,
    broker_rss_kib: u64,
    own_fds: usize,
    own_rss_kib: u64,
}

#[test]
fn soak_mixed_sizes_same_process_and_handoff_without_growth() {
    let env = TestEnv::new();
    let cycles: u64 = std::env::var(CYCLES_ENV)
        .ok()
        .map(|v| v.parse().expect("SHALLOC_SOAK_CYCLES must be a number"))
        .unwrap_or(DEFAULT_CYCLES);
    let every = (cycles / SAMPLES).max(1);
    let pattern = Pattern::new(MAX_SIZE + OFFSETS);
    let me = Pid::current();
    let broker = broker_pid().unwrap().as_raw().to_string();

    let (mut child, mut end) = procs::fork_with_channel(|end| handoff_child(&pattern, me, end));
    let to = child.pid();
    assert_eq!(end.recv(), 1);

    // Before the first sample, every size class in every way once (its largest size), and one
    // short-lived child: the warm-up then starts with the allocators' working sets in place.
    let mut ctx = Ctx {
        me,
        to,
        end: &mut end,
        pattern: &pattern,
    };
    for k in 0..15 {
        for mode in 0..3 {
            one_cycle(&mut ctx, k * 3 + mode, mode, 64 << k, 0);
        }
    }
    short_lived_child();

    let quiet = || {
        let l = shalloc::admin::listing(false).unwrap().unwrap();
        l.tables.is_empty() && l.broker.handles == 0 && l.broker.connections == 2
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut warm_targets = Vec::new();
    let mut grown_targets = Vec::new();
    let mut short_lived = 0;
    let started = Instant::now();
    for n in 0..cycles {
        if n % every == 0 {
            common::wait_until(Duration::from_secs(5), quiet);
            support::broker_fence();
            let s = Sample {
                cycle: n,
                broker_fds: support::fd_count(&broker),
                broker_rss_kib: support::vm_rss_kib(&broker),
                // Not counting the pool's warm blocks, which come and go with the sizes.
                own_fds: support::fd_count("self") - shalloc::pool::pooled().0,
                own_rss_kib: support::vm_rss_kib("self"),
            };
            eprintln!(
                "cycle {}: broker {} fds, {} KiB; us {} fds, {} KiB ({:.1?})",
                s.cycle,
                s.broker_fds,
                s.broker_rss_kib,
                s.own_fds,
                s.own_rss_kib,
                started.elapsed()
            );
            if samples.len() < WARM_UP_SAMPLES
                && samples.iter().all(|w| w.broker_fds < s.broker_fds)
            {
                warm_targets = support::fd_targets(&broker);
            }
            // The first sample past the warm-up's largest count: what the extra descriptor is.
            let warm_max = samples
                .iter()
                .take(WARM_UP_SAMPLES)
                .map(|w| w.broker_fds)
                .max();
            if samples.len() >= WARM_UP_SAMPLES
                && grown_targets.is_empty()
                && warm_max.is_some_and(|m| s.broker_fds > m)
            {
                grown_targets = support::fd_targets(&broker);
            }
            samples.push(s);
        }
        let (size, offset) = block_of(n);
        one_cycle(&mut ctx, n, n % 3, size, offset);
        if n % SHORT_LIVED_EVERY == SHORT_LIVED_EVERY / 2 {
            short_lived_child();
            short_lived += 1;
        }
    }
    let took = started.elapsed();
    end.send(STOP);
    child.expect_success();
    assert_eq!(live_views(), 0);

    eprintln!(
        "{cycles} cycles ({short_lived} short-lived children) in {took:.1?}: {:.0} µs per cycle",
        took.as_secs_f64() * 1e6 / cycles as f64
    );
    assert!(samples.len() > WARM_UP_SAMPLES + 1, "too few samples");
    let (warm, steady) = samples.split_at(WARM_UP_SAMPLES);
    let warm_fds = warm.iter().map(|s| s.broker_fds).max().unwrap();
    let warm_rss = warm.iter().map(|s| s.broker_rss_kib).max().unwrap();
    let last = steady.last().unwrap();
    eprintln!(
        "broker fds: warm-up max {warm_fds}, after it {:?}; broker VmRSS: warm-up max {warm_rss} \
         KiB, last {} KiB; our VmRSS {} -> {} KiB",
        steady.iter().map(|s| s.broker_fds).collect::<Vec<_>>(),
        last.broker_rss_kib,
        samples[0].own_rss_kib,
        last.own_rss_kib
    );
    let fd_growth: Vec<&Sample> = steady.iter().filter(|s| s.broker_fds > warm_fds).collect();
    assert!(
        fd_growth.is_empty(),
        "the broker's descriptors grew past {warm_fds}: {fd_growth:?}\nat the warm-up's \
         largest: {warm_targets:?}\nwhen they first grew: {grown_targets:?}"
    );
    assert!(
        last.broker_rss_kib <= warm_rss + RSS_SLACK_KIB,
        "the broker's VmRSS grew from {warm_rss} KiB (warm-up max) to {} KiB: {samples:?}",
        last.broker_rss_kib
    );
    let warm_own_rss = warm.iter().map(|s| s.own_rss_kib).max().unwrap();
    assert!(
        last.own_rss_kib <= warm_own_rss + OWN_RSS_SLACK_KIB,
        "our VmRSS grew from {warm_own_rss} KiB (warm-up max) to {} KiB: {samples:?}",
        last.own_rss_kib
    );
    let own: Vec<usize> = samples.iter().map(|s| s.own_fds).collect();
    assert!(
        own.iter().all(|f| *f == own[0]),
        "our descriptors changed: {own:?}"
    );
    drop(env);
}
