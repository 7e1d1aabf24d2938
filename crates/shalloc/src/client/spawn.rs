//! Starting a broker on demand.
//!
//! The first client that finds no broker starts one; a `flock` on the rendezvous' start lock makes
//! concurrent first callers start exactly one (the others wait for the lock, then find it running).
//! The broker is started fully detached, so that it outlives its starter and never holds the
//! starter's pipes open (`H=$(shalloc put …)` must return): a double fork, so it is not our child
//! (no zombie for us, nothing for our `wait` calls to find); a new session; stdin, stdout and
//! stderr on `/dev/null` (it logs to a file); every other descriptor closed but one pipe, on which
//! it writes one byte once it listens.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use shalloc_protocol::rendezvous::{self, Rendezvous};

use super::connection::{self, ConnectError};
use crate::error::{Error, Result};

/// The environment variable naming the `shalloc` executable that runs the broker.
pub const BROKER_ENV: &str = "SHALLOC_BROKER";

/// The environment variable that sets how long a broker started on demand stays with no clients
/// and no tables before it exits, in seconds (0: never).
pub const IDLE_EXIT_ENV: &str = "SHALLOC_IDLE_EXIT_SECS";

const DEFAULT_IDLE_EXIT_SECS: u64 = 30;

/// The descriptor number on which the started broker finds its ready pipe.
const READY_FD: libc::c_int = 3;

/// Starts a broker for `rendezvous` unless one is already listening, and waits until it listens.
pub(crate) fn ensure_broker(rendezvous: &Rendezvous, deadline: Instant) -> Result<()> {
    let _start_lock = take_start_lock(rendezvous, deadline)?;
    // Whoever held the lock before us may have started it.
    match connection::connect(rendezvous) {
        Ok(_) => return Ok(()),
        Err(ConnectError::NotRunning) => {}
        Err(ConnectError::Failed(why)) => return Err(Error::unavailable(why)),
    }
    let exe = find_broker_executable()?;
    let ready = spawn_detached(&exe, rendezvous)?;
    wait_ready(&ready, deadline).map_err(|why| {
        Error::unavailable(format!(
            "the broker {} did not start: {why} (see {})",
            exe.display(),
            rendezvous.log_file().display()
        ))
    })
}

/// Takes the start lock, waiting for it until `deadline`. The lock is released when the returned
/// file is closed.
fn take_start_lock(rendezvous: &Rendezvous, deadline: Instant) -> Result<std::fs::File> {
    let path = rendezvous.start_lock();
    let file = rendezvous::open_lock_file(&path)
        .map_err(|e| Error::unavailable(format!("cannot open {}: {e}", path.display())))?;
    match rendezvous::lock_exclusive(&file, deadline) {
        Ok(()) => Ok(file),
        Err(Errno::WOULDBLOCK) => Err(Error::unavailable(
            "timed out waiting for another process to start the broker",
        )),
        Err(e) => Err(Error::unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Finds the `shalloc` executable: `$SHALLOC_BROKER`; else beside the current executable or in its
/// parent directory (so tests and examples under `target/` find it); else beside libshalloc.so or
/// in `../bin` from it (an installed library finds its installed command); else on `PATH`.
pub fn find_broker_executable() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BROKER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::unavailable(format!(
                "{BROKER_ENV}={} is not an executable file",
                path.display()
            )))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("shalloc"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("shalloc"));
            }
        }
    }
    if let Some(dir) = library_dir() {
        candidates.push(dir.join("shalloc"));
        candidates.push(dir.join("../bin/shalloc"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("shalloc")));
    }
    candidates.into_iter().find(|c| is_executable(c)).ok_or_else(|| {
        Error::unavailable(format!(
            "cannot find the shalloc executable to start the broker: set {BROKER_ENV} to its path, or put it on PATH"
        ))
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory of the shared object this code lives in, when it was loaded as libshalloc.so.
fn library_dir() -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let here = library_dir as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`; on success `dli_fname` points to a
    // NUL-terminated string owned by the dynamic loader, valid while the object stays loaded.
    let path = unsafe {
        if libc::dladdr(here, info.as_mut_ptr()) == 0 {
            return None;
        }
        let info = info.assume_init();
        if info.dli_fname.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(info.dli_fname).to_bytes().to_vec()
    };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&path));
    let is_library = path
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"libshalloc.so"));
    if is_library {
        path.parent().map(Path::to_path_buf)
    } else {
        None
    }
}

/// Starts `exe broker …` fully detached and returns the read end of its ready pipe.
fn spawn_detached(exe: &Path, rendezvous: &Rendezvous) -> Result<OwnedFd> {
    let cstr = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| Error::unavailable("a path contains a NUL byte"))
    };
    // Everything the child needs is prepared before fork: after fork it may only make raw system
    // calls (another thread may have held the allocator's lock).
    let path = cstr(exe.as_os_str().as_bytes())?;
    let args = [
        path.clone(),
        cstr(b"broker")?,
        cstr(b"--runtime-dir")?,
        cstr(rendezvous.dir().as_os_str().as_bytes())?,
        cstr(b"--log-file")?,
        cstr(rendezvous.log_file().as_os_str().as_bytes())?,
        cstr(b"--ready-fd")?,
        cstr(READY_FD.to_string().as_bytes())?,
        cstr(b"--idle-exit")?,
        cstr(idle_exit_secs().to_string().as_bytes())?,
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("pipe", e))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::Io {
            what: "opening /dev/null",
            source: e,
        })?;
    // Move both sources above the target numbers 0..=3, so no dup2 below is a no-op that would
    // leave close-on-exec set.
    let high = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::io::fcntl_dupfd_cloexec(fd, 10).map_err(|e| Error::os("fcntl(F_DUPFD_CLOEXEC)", e))
    };
    let null_high = high(null.as_fd())?;
    let ready_high = high(ready_write.as_fd())?;
    let (null_raw, ready_raw) = (null_high.as_raw_fd(), ready_high.as_raw_fd());

    // SAFETY: fork has no memory-safety preconditions. In the child, only async-signal-safe calls
    // follow (setsid, fork, dup2, syscall(close_range), execv, _exit) on data prepared above.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return Err(Error::os("fork", Errno::from_raw_os_error(errno())));
    }
    if first == 0 {
        // SAFETY: see above; every pointer passed (argv, path) was built before fork and lives on.
        unsafe {
            libc::setsid();
            let second = libc::fork();
            if second != 0 {
                // The intermediate process exits at once (also when the second fork failed, which
                // the starter then sees as a ready pipe closed without a byte).
                libc::_exit(0);
            }
            if libc::dup2(null_raw, 0) < 0
                || libc::dup2(null_raw, 1) < 0
                || libc::dup2(null_raw, 2) < 0
                || libc::dup2(ready_raw, READY_FD) < 0
            {
                libc::_exit(127);
            }
            libc::syscall(
                libc::SYS_close_range,
                (READY_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    // Reap the intermediate process; it exits immediately. With SIGCHLD ignored there is nothing to
    // reap (ECHILD), which is fine.
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`.
    while unsafe { libc::waitpid(first, &mut status, 0) } < 0 && errno() == libc::EINTR {}
    drop(ready_write);
    drop(ready_high);
    drop(null_high);
    Ok(ready_read)
}

fn idle_exit_secs() -> u64 {
    std::env::var(IDLE_EXIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_IDLE_EXIT_SECS)
}

/// Waits for the broker's ready byte. A pipe closed without one means it exited at start.
fn wait_ready(ready: &OwnedFd, deadline: Instant) -> std::result::Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("it did not report ready in time".into());
        }
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(ready, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err("it did not report ready in time".into()),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let mut byte = [0u8; 1];
        return match rustix::io::read(ready, &mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err("it exited before listening".into()),
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(e) => Err(format!("reading its ready pipe: {e}")),
        };
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
