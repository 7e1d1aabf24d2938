//! Helpers for the reliability and soak tests: what `/proc` says about a process's descriptors,
//! mappings and memory, a clock every process shares, words of memory shared with forked children,
//! killing a child and knowing when it is gone, and summaries of measured times.
//!
//! Included with `#[path = "common/reliability_support.rs"] mod support;` next to `mod common;` and
//! `mod procs;`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::procs::{self, Child};

/// Sets an environment variable of the test process.
pub fn set_env(key: &str, value: &str) {
    // SAFETY: nextest runs each test alone in its process, and the tests call this at their start,
    // before they start any thread, so nothing reads the environment concurrently.
    unsafe { std::env::set_var(key, value) };
}

/// Nanoseconds on `CLOCK_MONOTONIC`, which every process on the machine shares (unlike `Instant`,
/// whose values cannot be sent to another process).
pub fn monotonic_ns() -> u64 {
    shalloc_protocol::segment::monotonic_ns()
}

/// Makes pooled and kept blocks count as idle only after a minute, in this process and the
/// children it forks (call it before the first shalloc call: the pool reads its settings once), so
/// that a slow or loaded machine does not turn an expected reuse into a fresh block.
pub fn keep_pool_warm() {
    set_env(shalloc::pool::POOL_IDLE_ENV, "60000");
}

/// Starts the broker (its start forks, which must come before any block exists) and checks that
/// the pool starts empty. Returns our pid.
pub fn start_with_empty_pool() -> shalloc::Pid {
    shalloc::broker_pid().unwrap();
    assert_eq!(shalloc::pool::trim(), 0, "a new process has nothing pooled");
    assert_eq!(shalloc::pool::pooled(), (0, 0));
    shalloc::Pid::current()
}

/// A few words of memory shared with every child forked after it was made (an anonymous
/// `MAP_SHARED` mapping survives `fork` as the same memory).
pub struct SharedWords {
    ptr: *mut AtomicU64,
    len: usize,
}

impl SharedWords {
    pub fn new(len: usize) -> SharedWords {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks touches no existing
        // memory; it is zero-filled, page-aligned, and a valid array of `len` AtomicU64.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len * 8,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }
        .expect("mmap a shared page");
        SharedWords {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len);
        // SAFETY: `i` is in bounds of the mapping, which lives as long as `self`; AtomicU64 may be
        // shared between threads and processes.
        unsafe { &*self.ptr.add(i) }
    }

    pub fn get(&self, i: usize) -> u64 {
        self.word(i).load(Ordering::SeqCst)
    }

    pub fn set(&self, i: usize, v: u64) {
        self.word(i).store(v, Ordering::SeqCst);
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and nothing borrows it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len * 8) };
    }
}

/// The number of descriptors process `pid` (`"self"` for this one) has open.
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// What each descriptor of process `pid` names (`readlink` of `/proc/<pid>/fd/<n>`), sorted: for
/// failure messages that say which descriptor leaked.
pub fn fd_targets(pid: &str) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{}->{}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    targets.sort();
    targets
}

/// The inode of every file process `pid` has open (memfds included).
pub fn fd_inodes(pid: &str) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .map(|m| m.ino())
        .collect()
}

/// How many of process `pid`'s descriptors are memfds.
pub fn memfd_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("/memfd:"))
        .count()
}

/// The lines of `/proc/<pid>/maps`.
pub fn maps(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The mappings of memfds in process `pid`.
pub fn memfd_maps(pid: &str) -> Vec<String> {
    maps(pid)
        .into_iter()
        .filter(|l| l.contains("/memfd:"))
        .collect()
}

/// The inode of the file mapped at address `addr` in this process, if a mapping starts there.
pub fn inode_mapped_at(addr: usize) -> Option<u64> {
    maps("self").iter().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let start = usize::from_str_radix(range.split('-').next()?, 16).ok()?;
        (start == addr).then(|| fields.nth(3)?.parse().ok())?
    })
}

/// Whether this process maps the file with inode `ino` anywhere.
pub fn maps_inode(ino: u64) -> bool {
    maps("self").iter().any(|line| {
        line.split_whitespace()
            .nth(4)
            .and_then(|f| f.parse::<u64>().ok())
            == Some(ino)
            && line.contains("/memfd:")
    })
}

/// The resident set size of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A pidfd for process `pid` (a child of ours, or a broker we know the pid of).
pub fn pidfd(pid: u32) -> std::os::fd::OwnedFd {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("pidfd_open")
}

/// Kills `pid` with SIGKILL and waits (at most `limit`) until it has exited, through a pidfd opened
/// before the kill, so the pid cannot have been reused in between. Returns when it is gone.
pub fn kill_and_wait_gone(pid: u32, limit: Duration) -> Instant {
    let fd = pidfd(pid);
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL).expect("pidfd kill");
    assert!(
        procs::poll_readable(fd.as_fd(), limit),
        "process {pid} still runs {limit:?} after SIGKILL"
    );
    Instant::now()
}

/// SIGKILLs our child and reaps it; returns the moment `waitpid` returned.
pub fn kill_and_reap(child: &mut Child) -> Instant {
    // SAFETY: kill takes plain integers; the pid is our own child, not yet reaped.
    unsafe { libc::kill(child.raw(), libc::SIGKILL) };
    let fd = pidfd(child.raw() as u32);
    assert!(
        procs::poll_readable(fd.as_fd(), procs::LIMIT),
        "child {} survived SIGKILL",
        child.raw()
    );
    let code = child.wait();
    let reaped = Instant::now();
    assert_eq!(code, 128 + libc::SIGKILL, "child's exit status");
    reaped
}

/// Sends native-endian `u64`s over a pipe.
pub fn send_u64s(w: &mut File, values: &[u64]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    w.write_all(&bytes).unwrap();
}

/// Receives `n` native-endian `u64`s (deadline and EOF handling as [`procs::recv_exact`]).
pub fn recv_u64s(r: &mut File, n: usize) -> Vec<u64> {
    let mut bytes = vec![0u8; n * 8];
    procs::recv_exact(r, &mut bytes);
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Polls `cond` with no pause (each poll is a round trip to the broker) until it holds or `limit`
/// passes; returns how long it took, `None` after `limit`.
pub fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::yield_now();
    }
}

/// `min / median / p90 / max` of some durations, in milliseconds.
pub fn summary(times: &[Duration]) -> String {
    let mut v = times.to_vec();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min {:.2} ms, median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        v.len(),
        ms(v[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(v[v.len() - 1])
    )
}

/// `count` bytes of a fixed pseudo-random stream, starting `offset` bytes in: the same in every
/// process, so a receiver can check a block without being sent its contents.
pub struct Pattern(Vec<u8>);

impl Pattern {
    pub fn new(len: usize) -> Pattern {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_ne_bytes());
        }
        bytes.truncate(len);
        Pattern(bytes)
    }

    pub fn slice(&self, offset: usize, count: usize) -> &[u8] {
        &self.0[offset..offset + count]
    }
}

/// The `pidns-*.lock` files in `dir` that a live broker holds (its `flock`), as (path, pid hint).
pub fn held_broker_locks(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pidns-") && name.ends_with(".lock")) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let free = rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockShared,
        )
        .is_ok();
        if !free {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            held.push((path, pid.trim().to_owned()));
        }
    }
    held
}

/// One round trip whose reply carries no descriptor. The broker serves a connection's requests in
/// order and closes a reply's descriptor (a lock's block, a listing's memfd) right after sending
/// it, so once this returns it holds no descriptor for an earlier reply of ours — without the
/// fence, a count of its descriptors taken just after a listing may still see the listing's memfd.
///
/// It must reach the broker: a free in our own table is answered by the client alone, with no
/// round trip, so the owner named is the broker's own process (alive, ours, with no table).
pub fn broker_fence() {
    // 1 is never a handle value (they are multiples of 4 from 0x100): this always fails.
    let r = shalloc::free(
        shalloc::Handle::from_raw(1).unwrap(),
        shalloc::broker_pid().unwrap(),
    );
    assert!(
        matches!(r, Err(shalloc::Error::InvalidHandle { .. })),
        "fence: {r:?}"
    );
}
