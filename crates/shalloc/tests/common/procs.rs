//! Helpers for tests that start processes: a forked child that is killed (by its pid) and reaped
//! if the test ends without waiting for it, pipes with deadlines between a parent and its child,
//! the real CLI run with a deadline, and what `/proc` says about a process.
//!
//! Included by test files with `#[path = "common/procs.rs"] mod procs;` next to `mod common;`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

/// How long any one step that waits for another process may take.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A forked child. Dropping it without [`Child::wait`] kills it by its pid and reaps it.
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    /// Forks; the child runs `f` and exits with its result (101 if it panics).
    pub fn fork(f: impl FnOnce() -> i32) -> Child {
        Child {
            pid: crate::common::fork(f),
            reaped: false,
        }
    }

    /// The child's pid as shalloc names processes.
    pub fn pid(&self) -> shalloc::Pid {
        shalloc::Pid::from_raw(self.pid as u32)
    }

    /// The child's pid as the kernel's number.
    pub fn raw(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits (at most [`LIMIT`]) for the child to exit, reaps it, and returns its exit code
    /// (128 + the signal when a signal killed it).
    pub fn wait(&mut self) -> i32 {
        let code = crate::common::wait_exit(self.pid, LIMIT);
        self.reaped = true;
        code
    }

    /// Waits for the child and fails the test unless it exited with 0.
    pub fn expect_success(&mut self) {
        let pid = self.pid;
        let code = self.wait();
        assert_eq!(
            code, 0,
            "child {pid} failed with exit code {code} (a panic in it prints its message above)"
        );
    }

    /// Waits (at most [`LIMIT`]) until the child has exited, without reaping it: afterwards it is a
    /// zombie (checked through `/proc/<pid>/stat`).
    pub fn wait_until_zombie(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid).expect("a child's pid is positive");
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .expect("pidfd_open on our child");
        assert!(
            poll_readable(pidfd.as_fd(), LIMIT),
            "child {} did not exit within {LIMIT:?}",
            self.pid
        );
        crate::common::wait_until(LIMIT, || state(self.pid) == Some('Z'));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: kill and waitpid take plain integers and a pointer to a local; the pid is our
            // own child, not yet reaped, so it cannot name another process.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// Closes descriptor `fd` in a forked child, where the `File` that owns it in the parent's copy
/// of memory is never dropped (the child leaves with `_exit`).
pub fn close_in_child(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions; in the child nothing
    // else uses this descriptor (its owner is a parent-side `File` the child never touches).
    unsafe { libc::close(fd) };
}

/// Whether `fd` becomes readable (or hung up) within `limit`.
pub fn poll_readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Reads exactly `buf.len()` bytes from `r`, failing the test on EOF or after [`LIMIT`].
pub fn recv_exact(r: &mut File, buf: &mut [u8]) {
    let deadline = Instant::now() + LIMIT;
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            poll_readable(r.as_fd(), left),
            "no message from the other process within {LIMIT:?}"
        );
        match r.read(&mut buf[filled..]) {
            Ok(0) => panic!("the other process closed the pipe after {filled} bytes"),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads one native-endian `u32`.
pub fn recv_u32(r: &mut File) -> u32 {
    let mut b = [0u8; 4];
    recv_exact(r, &mut b);
    u32::from_ne_bytes(b)
}

/// Writes one native-endian `u32` (atomically: pipes write 4 bytes in one piece).
pub fn send_u32(w: &mut File, v: u32) {
    w.write_all(&v.to_ne_bytes()).unwrap();
}

/// Waits (at most [`LIMIT`]) until every writer of `r` has closed it; data before that fails.
pub fn recv_eof(r: &mut File) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            poll_readable(r.as_fd(), left),
            "the pipe was not closed within {LIMIT:?}"
        );
        let mut b = [0u8; 16];
        match r.read(&mut b) {
            Ok(0) => return,
            Ok(n) => panic!("expected the pipe to close, got {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// One side of a two-way channel between a parent and one forked child.
pub struct End {
    pub r: File,
    pub w: Option<File>,
}

impl End {
    pub fn send(&mut self, v: u32) {
        send_u32(self.w.as_mut().expect("write end already closed"), v);
    }

    pub fn recv(&mut self) -> u32 {
        recv_u32(&mut self.r)
    }

    /// Closes our write end: the other side's [`End::wait_closed`] returns.
    pub fn close(&mut self) {
        self.w = None;
    }

    /// Waits until the other side closed its write end (or exited).
    pub fn wait_closed(&mut self) {
        recv_eof(&mut self.r);
    }
}

/// Forks a child that runs `f` with its end of a fresh two-way channel; returns the child and the
/// parent's end. Each side holds only its own ends, so closing one is seen by the other.
pub fn fork_with_channel(f: impl FnOnce(End) -> i32) -> (Child, End) {
    let (to_child_r, to_child_w) = crate::common::pipe();
    let (to_parent_r, to_parent_w) = crate::common::pipe();
    let parent_fds = [to_parent_r.as_raw_fd(), to_child_w.as_raw_fd()];
    let mut child_end = Some(End {
        r: to_child_r,
        w: Some(to_parent_w),
    });
    let child = Child::fork(|| {
        parent_fds.into_iter().for_each(close_in_child);
        f(child_end.take().expect("the child takes its end once"))
    });
    drop(child_end);
    (
        child,
        End {
            r: to_parent_r,
            w: Some(to_child_w),
        },
    )
}

/// The one-letter state of process `pid` from `/proc/<pid>/stat` (`R`, `S`, `Z`, ...).
pub fn state(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.trim_start().chars().next()
}

/// The descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The pids of all live `shalloc broker` processes serving runtime directory `dir`.
pub fn brokers_serving(dir: &Path) -> Vec<u32> {
    let dir = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"--runtime-dir" && w[1] == dir);
        if args.get(1) == Some(&&b"broker"[..]) && serves && state(pid as i32) != Some('Z') {
            found.push(pid);
        }
    }
    found
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` to its end, feeding it `stdin` (or /dev/null) and collecting its output; kills it by
/// its pid and fails the test when it takes longer than [`LIMIT`].
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::os::unix::process::ExitStatusExt;
    let out = crate::common::run_limited(cmd, stdin, LIMIT);
    Output {
        code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The broker's own count of live handles over all tables (from `shalloc ls`'s listing).
pub fn broker_handles() -> u64 {
    shalloc::admin::listing(false)
        .unwrap()
        .expect("a broker runs")
        .broker
        .handles
}

/// How many handles the broker lists in `pid`'s table; `None` when it has no table for `pid`.
pub fn table_handles(pid: shalloc::Pid) -> Option<u64> {
    shalloc::admin::listing(false)
        .unwrap()
        .expect("a broker runs")
        .tables
        .iter()
        .find(|t| t.pid == pid.as_raw())
        .map(|t| t.handles)
}
