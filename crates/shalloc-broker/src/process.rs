//! Processes as the broker sees them: a pid pinned by a pidfd, and the access rule.
//!
//! A pid alone is a number the kernel may hand to a new process as soon as the old one is reaped;
//! a pidfd names one process for as long as it is held. Every check below that looks a pid up
//! through `/proc` or another pid-taking call is followed by a look at the pidfd: if the process is
//! still alive then, the pid cannot have been reused in between, so the answer was about it.
//!
//! The access rule (DESIGN.md §2) is ptrace's: a caller may touch another process's table only if
//! both have the broker's real, effective and saved uid and the target is alive and dumpable. The
//! dumpable half is asked of the kernel itself, through `kcmp`, whose permission check is
//! `PTRACE_MODE_READ_REALCREDS`; the broker gives up `CAP_SYS_PTRACE` at start so that the check
//! applies even when it runs as root (see [`crate::startup`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};

use crate::failure::Failure;

/// A live process, pinned by its pidfd.
#[derive(Debug)]
pub(crate) struct Process {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

impl Process {
    /// Pins process `pid`, failing with "no such process" for ids that cannot exist or name none.
    pub fn open(pid: u32) -> Result<Process, Failure> {
        let raw = i32::try_from(pid).ok().filter(|p| *p > 0);
        let Some(pid_raw) = raw.and_then(Pid::from_raw) else {
            return Err(Failure::no_such_process(format!(
                "{pid} is not a valid process id"
            )));
        };
        match rustix::process::pidfd_open(pid_raw, PidfdFlags::empty()) {
            Ok(pidfd) => Ok(Process { pid, pidfd }),
            Err(Errno::SRCH) => Err(Failure::no_such_process(format!("no process has id {pid}"))),
            // A thread id that is not a thread group leader: not a process.
            Err(Errno::INVAL) => Err(Failure::no_such_process(format!(
                "{pid} is a thread id, not a process id"
            ))),
            Err(e) => Err(Failure::no_resources(format!(
                "cannot open a pidfd for process {pid}: {e}"
            ))),
        }
    }

    /// Whether the process has exited (it may still be a zombie).
    pub fn has_exited(&self) -> bool {
        has_exited(self.pidfd.as_fd())
    }
}

/// Whether the process behind `pidfd` has exited: a pidfd polls readable from the moment its
/// process exits.
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => true,
        // A pidfd that cannot be polled is treated as gone: fail closed.
        Err(_) => true,
    }
}

/// The real, effective and saved uids of `pid`, read from `/proc`.
fn uids(pid: u32) -> Option<[u32; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some([ids.next()??, ids.next()??, ids.next()??])
}

/// Checks that the calling process (pinned by its connection's pidfd) still runs with the broker's
/// uid in all three slots. Credentials are re-read on every request that reaches beyond the
/// caller's own table, so a process that changed its uids after connecting gets nothing.
pub(crate) fn check_caller(caller: &Process, broker_uid: u32) -> Result<(), Failure> {
    if caller.has_exited() {
        return Err(Failure::access_denied("the calling process has exited"));
    }
    let ids = uids(caller.pid);
    if caller.has_exited() {
        return Err(Failure::access_denied("the calling process has exited"));
    }
    match ids {
        Some(ids) if ids.iter().all(|id| *id == broker_uid) => Ok(()),
        Some(ids) => Err(Failure::access_denied(format!(
            "the caller's uids (real {}, effective {}, saved {}) are not all the broker's ({broker_uid})",
            ids[0], ids[1], ids[2]
        ))),
        None => Err(Failure::access_denied(
            "cannot read the caller's credentials",
        )),
    }
}

/// Checks that another process's table may be touched: the target is alive, has the broker's uid
/// in all three slots, and is dumpable (the kernel's ptrace read check passes).
pub(crate) fn check_target(target: &Process, broker_uid: u32) -> Result<(), Failure> {
    let pid = target.pid;
    if target.has_exited() {
        return Err(Failure::access_denied(format!("process {pid} has exited")));
    }
    let ids = uids(pid);
    let ptrace_read = kernel_allows_ptrace_read(pid);
    // Both answers came from pid-taking calls: they were about our process only if it is still
    // alive now (a pid is not reused before its process is reaped, which needs it to exit first).
    if target.has_exited() {
        return Err(Failure::access_denied(format!("process {pid} has exited")));
    }
    match ids {
        Some(ids) if ids.iter().all(|id| *id == broker_uid) => {}
        Some(ids) => {
            return Err(Failure::access_denied(format!(
                "process {pid} runs as uids {}/{}/{} (real/effective/saved), not all {broker_uid}",
                ids[0], ids[1], ids[2]
            )));
        }
        None => {
            return Err(Failure::access_denied(format!(
                "cannot read the credentials of process {pid}"
            )));
        }
    }
    match ptrace_read {
        Ok(()) => Ok(()),
        Err(Errno::PERM) | Err(Errno::ACCESS) => Err(Failure::access_denied(format!(
            "process {pid} is not dumpable (or runs with other gids): its table is closed to others, as it is to ptrace"
        ))),
        Err(Errno::SRCH) => Err(Failure::no_such_process(format!("process {pid} is gone"))),
        Err(e) => Err(Failure::access_denied(format!(
            "cannot check access to process {pid}: {e}"
        ))),
    }
}

/// Asks the kernel whether this process passes `PTRACE_MODE_READ_REALCREDS` on `pid`: `kcmp`
/// performs exactly that check (and compares nothing we need). Kernels without `kcmp` get the same
/// check from opening `/proc/<pid>/environ` (`PTRACE_MODE_READ_FSCREDS`).
fn kernel_allows_ptrace_read(pid: u32) -> Result<(), Errno> {
    const KCMP_VM: libc::c_int = 1;
    let me = std::process::id() as libc::pid_t;
    // SAFETY: kcmp takes five integer arguments and touches no memory of ours; KCMP_VM ignores
    // the last two.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, me, pid as libc::pid_t, KCMP_VM, 0, 0) };
    if rc >= 0 {
        return Ok(());
    }
    let errno = Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    );
    if errno != Errno::NOSYS {
        return Err(errno);
    }
    match std::fs::File::open(format!("/proc/{pid}/environ")) {
        Ok(_) => Ok(()),
        Err(e) => Err(Errno::from_io_error(&e).unwrap_or(Errno::ACCESS)),
    }
}
