//! What every end-to-end test shares: a private runtime directory (so brokers of parallel tests
//! never meet), the real `shalloc` executable to start the broker from, and cleanup that ends the
//! broker the test caused to start — by its pid, read from its lock file.
//!
//! Tests run one per process under `cargo nextest` (the README's test command), which is what makes
//! setting the environment at the start of a test sound.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shalloc_protocol::rendezvous::Rendezvous;

/// A test's private shalloc world.
pub struct TestEnv {
    pub dir: PathBuf,
    pub target_dir: PathBuf,
}

/// The cargo target directory this test binary lives in (`target/<profile>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

impl TestEnv {
    pub fn new() -> TestEnv {
        assert_eq!(
            std::env::var("NEXTEST_EXECUTION_MODE").as_deref(),
            Ok("process-per-test"),
            "these tests set process-wide environment and fork: run them with `cargo nextest run`"
        );
        let target_dir = target_dir();
        let bin = target_dir.join("shalloc");
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build` first",
            bin.display()
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("shalloc-t-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: nextest runs this test alone in its process, and this runs before the test starts
        // any thread, so nothing reads the environment concurrently.
        unsafe {
            std::env::set_var("SHALLOC_RUNTIME_DIR", &dir);
            std::env::set_var("SHALLOC_BROKER", &bin);
        }
        TestEnv { dir, target_dir }
    }

    pub fn rendezvous(&self) -> Rendezvous {
        Rendezvous::in_dir(&self.dir).unwrap()
    }

    /// The pid of the broker running for this test, if one holds the broker lock.
    pub fn running_broker(&self) -> Option<u32> {
        let r = self.rendezvous();
        let file = std::fs::File::open(r.broker_lock()).ok()?;
        match rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockShared,
        ) {
            Ok(()) => None, // nobody holds it
            Err(_) => r.broker_pid_hint(),
        }
    }

    /// The `shalloc` executable.
    pub fn bin(&self) -> PathBuf {
        self.target_dir.join("shalloc")
    }

    /// Kills the broker and waits until it is gone.
    pub fn kill_broker(&self) {
        if let Some(pid) = self.running_broker() {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_until(Duration::from_secs(5), || self.running_broker().is_none());
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_broker();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Forks; the child runs `f` and exits with its return value (101 if it panics).
pub fn fork(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the test process is single-threaded apart from threads shalloc's atfork handler
    // makes safe; the child only runs `f` and exits without unwinding into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits (at most `limit`) for child `pid` and returns its exit code; kills it on timeout.
pub fn wait_exit(pid: libc::pid_t, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kill takes plain integers; pid is our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child {pid} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `cmd` to its end within `limit`, feeding it `stdin` (or /dev/null) and collecting its
/// output; kills it by its pid and fails the test when it overruns.
pub fn run_limited(
    cmd: &mut std::process::Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    if let Some(mut pipe) = child.stdin.take() {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &data);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill takes plain integers; pid is our child's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// A pipe for parent/child messages: (read end, write end) as Files.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = rustix::pipe::pipe().unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}
