//! Load: many live handles, a large block, threads sharing one connection, and concurrent first
//! callers that must end up with exactly one broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use common::TestEnv;
use procs::{Child, close_in_child};
use shalloc::{Error, Handle, Pid, alloc, alloc_zeroed, free, lock};

/// A deterministic, non-periodic byte stream (xorshift64*), so that misplaced pages show.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn two_thousand_live_handles_in_one_table() {
    let env = TestEnv::new();
    let me = Pid::current();
    const N: u32 = 2000;
    let handles: Vec<Handle> = (0..N)
        .map(|i| {
            let mut block = i.to_le_bytes().to_vec();
            block.resize(4 + (i as usize % 61), (i % 251) as u8);
            alloc(&block, me).unwrap_or_else(|e| panic!("alloc #{i}: {e}"))
        })
        .collect();
    let distinct: HashSet<Handle> = handles.iter().copied().collect();
    assert_eq!(distinct.len(), N as usize, "handle values repeat");
    assert!(env.running_broker().is_some());
    assert_eq!(
        procs::table_handles(me),
        Some(u64::from(N)),
        "the broker does not list every handle"
    );
    // All live at once, each still its own block; lock them all before unlocking any.
    let views: Vec<_> = handles.iter().map(|h| lock(*h, me).unwrap()).collect();
    for (i, v) in views.iter().enumerate() {
        let i = i as u32;
        let mut head = [0u8; 4];
        v.read_at(0, &mut head).unwrap();
        assert_eq!(
            u32::from_le_bytes(head),
            i,
            "handle #{i} shows another block"
        );
        assert_eq!(v.len(), 4 + (i as usize % 61));
        assert!(v.to_vec()[4..].iter().all(|b| *b == (i % 251) as u8));
    }
    drop(views);
    // Free in an order unlike allocation's: odd ones first, then even ones backwards.
    let order = handles
        .iter()
        .skip(1)
        .step_by(2)
        .chain(handles.iter().step_by(2).rev());
    for h in order {
        free(*h, me).unwrap();
    }
    for h in handles.iter().step_by(97) {
        assert!(matches!(lock(*h, me), Err(Error::InvalidHandle { .. })));
    }
    assert_eq!(procs::table_handles(me).unwrap_or(0), 0);
    assert_eq!(procs::broker_handles(), 0);
}

#[test]
fn a_64_mib_block_is_byte_exact_here_and_in_another_process() {
    let _env = TestEnv::new();
    let me = Pid::current();
    const LEN: usize = 64 << 20;
    let data = noise(LEN, 0x5eed);
    let h = alloc(&data, me).unwrap();
    let v = lock(h, me).unwrap();
    assert_eq!(v.len(), LEN);
    assert!(
        v.to_vec() == data,
        "the 64 MiB block differs from what was put in"
    );
    let mut tail = [0u8; 16];
    v.read_at(LEN - 16, &mut tail).unwrap();
    assert_eq!(tail, data[LEN - 16..]);
    drop(data);
    // A child maps it through its own lock and checks every byte, then writes its last byte.
    let mut child = Child::fork(move || {
        let v = lock(h, me).unwrap();
        assert!(
            v.to_vec() == noise(LEN, 0x5eed),
            "the child saw other bytes"
        );
        v.write_at(LEN - 1, &[0x42]).unwrap();
        0
    });
    child.expect_success();
    v.read_at(LEN - 1, &mut tail[..1]).unwrap();
    assert_eq!(tail[0], 0x42);
    free(h, me).unwrap();
    // A zero-filled block of the same size is all zeros.
    let z = alloc_zeroed(LEN, me).unwrap();
    assert!(lock(z, me).unwrap().to_vec().iter().all(|b| *b == 0));
    free(z, me).unwrap();
}

#[test]
fn four_threads_cycle_alloc_lock_check_free() {
    let _env = TestEnv::new();
    let me = Pid::current();
    const ROUNDS: usize = 500;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                s.spawn(move || {
                    for i in 0..ROUNDS {
                        let len = 1 + (i * 37 + usize::from(t) * 101) % 5000;
                        let block: Vec<u8> = (0..len)
                            .map(|k| t.wrapping_mul(64) ^ (k as u8) ^ (i as u8))
                            .collect();
                        let h = alloc(&block, me).unwrap();
                        let v = lock(h, me).unwrap();
                        assert_eq!(v.to_vec(), block, "thread {t} round {i}: wrong bytes");
                        v.write_at(0, &[t]).unwrap();
                        let w = lock(h, me).unwrap();
                        let mut head = [0u8; 1];
                        w.read_at(0, &mut head).unwrap();
                        assert_eq!(head[0], t, "thread {t} round {i}: views do not share");
                        free(h, me).unwrap();
                        if i % 50 == 0 {
                            assert!(matches!(free(h, me), Err(Error::InvalidHandle { .. })));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker thread failed");
        }
    });
    assert_eq!(shalloc::live_views(), 0, "views leaked");
}

#[test]
fn eight_concurrent_first_callers_start_exactly_one_broker() {
    let env = TestEnv::new();
    assert!(
        env.running_broker().is_none(),
        "the runtime directory is not fresh"
    );
    assert!(procs::brokers_serving(&env.dir).is_empty());
    let parent = Pid::current();
    let (mut go_r, go_w) = common::pipe();
    let (mut results_r, results_w) = common::pipe();
    let go_w_fd = go_w.as_raw_fd();
    let results_r_fd = results_r.as_raw_fd();
    let mut children: Vec<Child> = (0..8u32)
        .map(|i| {
            Child::fork(|| {
                close_in_child(go_w_fd);
                close_in_child(results_r_fd);
                // Everyone waits here until the parent closes the go pipe.
                procs::recv_eof(&mut go_r);
                let broker = shalloc::broker_pid().unwrap();
                let h = alloc(&i.to_le_bytes(), parent).unwrap();
                let mut w = &results_w;
                let mut msg = [0u8; 12];
                msg[..4].copy_from_slice(&i.to_ne_bytes());
                msg[4..8].copy_from_slice(&broker.as_raw().to_ne_bytes());
                msg[8..].copy_from_slice(&h.as_raw().to_ne_bytes());
                std::io::Write::write_all(&mut w, &msg).unwrap();
                0
            })
        })
        .collect();
    drop(results_w);
    drop(go_w); // release them all at once
    let mut brokers = HashSet::new();
    let mut seen = HashSet::new();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut msg = [0u8; 12];
        procs::recv_exact(&mut results_r, &mut msg);
        let word = |k: usize| u32::from_ne_bytes(msg[k * 4..k * 4 + 4].try_into().unwrap());
        assert!(seen.insert(word(0)), "child {} answered twice", word(0));
        brokers.insert(word(1));
        handles.push((word(0), Handle::from_raw(word(2)).unwrap()));
    }
    for child in &mut children {
        child.expect_success();
    }
    assert_eq!(
        brokers.len(),
        1,
        "the children talked to several brokers: {brokers:?}"
    );
    let broker = brokers.into_iter().next().unwrap();
    assert_eq!(env.running_broker(), Some(broker));
    assert_eq!(
        procs::brokers_serving(&env.dir),
        vec![broker],
        "more than one broker runs"
    );
    // The parent reaches the same broker and finds every child's block in its table.
    assert_eq!(shalloc::broker_pid().unwrap().as_raw(), broker);
    for (i, h) in handles {
        assert_eq!(lock(h, parent).unwrap().to_vec(), i.to_le_bytes());
        free(h, parent).unwrap();
    }
}
