//! The shalloc broker: the one process that outlives its clients and keeps every process's handle
//! table, as wineserver does for Wine.
//!
//! Each table is a segment of shared memory ([`shalloc_protocol::segment`]) that the broker makes
//! and the table's process maps once it attaches. That process changes its own table itself and
//! holds the blocks in it; the broker serves everyone else's calls on the table by the same
//! compare-and-swap, opening a block again from the owner's descriptor (`/proc/<pid>/fd`) when
//! another process locks it. It holds a block itself only while the table's owner has not taken it
//! (a block another process put there), which is what its descriptor limit and the user's total
//! count.
//!
//! It is per user and per PID namespace, listens on a `SOCK_SEQPACKET` socket in a private runtime
//! directory (see [`shalloc_protocol::rendezvous`]), and serves from a single-threaded epoll loop.
//! It never sees a block's bytes: clients create and fill memfds themselves and the broker moves
//! only descriptors and small frames.
//!
//! - Who is calling comes from the kernel (`SO_PEERCRED`, `SO_PEERPIDFD`), never from a message.
//! - A table belongs to a process, not to a number: it is pinned by a pidfd and dropped when that
//!   process exits.
//! - Touching another process's table follows ptrace's rule: same uids, target alive and dumpable.
//!
//! Run it with [`run`]; the `shalloc broker` command does, and clients start it on demand.

mod block;
mod failure;
mod handlers;
mod handles;
mod listing;
pub mod log;
mod process;
mod reopen;
mod startup;
mod state;
mod tables;
mod trim;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use shalloc_protocol::rendezvous::{Rendezvous, runtime_dir};

/// The default largest block: what a Win32 `DWORD` size can express.
pub const DEFAULT_MAX_BLOCK: u64 = u32::MAX as u64;

/// The default limit of handles in one process's table.
pub const DEFAULT_MAX_HANDLES_PER_TABLE: usize = 65_536;

/// The default limit of blocks the broker holds over all tables (the user's total of handles put
/// into tables whose owners have not taken them); the broker's open-file limit caps it too, since
/// each costs the broker one descriptor. Handles a process keeps in its own table cost the broker
/// nothing and count against the table's limit and the process's own descriptors.
pub const DEFAULT_MAX_HANDLES: usize = 1 << 20;

/// What the broker allows. Past a limit, a request fails with a clear error (block too large:
/// `ERROR_NOT_ENOUGH_MEMORY`; too many handles: `ERROR_NO_SYSTEM_RESOURCES`) and nothing else
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest block accepted, in bytes.
    pub max_block: u64,
    /// The most handles one process's table may hold.
    pub max_handles_per_table: usize,
    /// The most blocks the broker holds for all tables together (handles whose owner has not taken
    /// them).
    pub max_handles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block: DEFAULT_MAX_BLOCK,
            max_handles_per_table: DEFAULT_MAX_HANDLES_PER_TABLE,
            max_handles: DEFAULT_MAX_HANDLES,
        }
    }
}

/// How to run the broker.
#[derive(Debug)]
pub struct Config {
    /// The runtime directory; `None` uses the same rule as clients.
    pub runtime_dir: Option<PathBuf>,
    /// Log to this file (appending) instead of stderr.
    pub log_file: Option<PathBuf>,
    /// The most detailed log level written.
    pub log_level: log::Level,
    /// A descriptor to write one byte to, and close, once the socket is listening.
    pub ready_fd: Option<OwnedFd>,
    /// What the broker allows.
    pub limits: Limits,
    /// Exit after this long with no connections and no tables (brokers that clients start on
    /// demand); `None` stays forever (a broker under a service manager).
    pub idle_exit: Option<std::time::Duration>,
    /// A listening socket inherited from a service manager (socket activation); `None` binds the
    /// rendezvous socket itself.
    pub listener: Option<OwnedFd>,
    /// How long to wait for the broker lock when another broker still holds it (one that is just
    /// exiting); zero fails at once.
    pub lock_wait: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runtime_dir: None,
            log_file: None,
            log_level: log::Level::Info,
            ready_fd: None,
            limits: Limits::default(),
            idle_exit: None,
            listener: None,
            lock_wait: std::time::Duration::ZERO,
        }
    }
}

/// For fuzzing only, not a stable API: a fresh broker serves `frames` as one client connection of
/// the calling process, over a socketpair, exactly as its event loop would (each frame with its
/// descriptor, if any), and the reply frames come back in order. Handle values start at `0x100`
/// and step by 4; nothing is logged below errors. It stops early once the broker drops the
/// connection or is asked to stop.
#[doc(hidden)]
pub fn fuzz_frames(
    frames: &[(&[u8], Option<std::os::fd::BorrowedFd<'_>>)],
) -> std::io::Result<Vec<Vec<u8>>> {
    state::fuzz_frames(frames)
}

/// Why the broker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another broker serves this runtime directory and PID namespace.
    #[error("a broker is already running in {dir}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// Its pid, when it wrote one.
        pid: Option<u32>,
        /// The runtime directory.
        dir: PathBuf,
    },
    /// The runtime directory failed its checks.
    #[error("{0}")]
    RuntimeDir(std::io::Error),
    /// A setup step failed.
    #[error("{0}: {1}")]
    Setup(String, std::io::Error),
    /// The event loop failed.
    #[error("event loop: {0}")]
    Loop(std::io::Error),
}

/// Runs the broker until SIGTERM, SIGINT, a Stop request or its idle time, then removes its
/// socket (unless a service manager gave it the socket, which then stays the manager's).
pub fn run(mut config: Config) -> Result<(), Error> {
    let dir = config.runtime_dir.clone().unwrap_or_else(runtime_dir);
    let rendezvous = Rendezvous::in_dir(dir).map_err(Error::RuntimeDir)?;
    rendezvous.prepare_dir().map_err(Error::RuntimeDir)?;
    let log_file = match &config.log_file {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| Error::Setup(format!("cannot open log {}", path.display()), e))?,
        ),
        None => None,
    };
    let mut log = log::Log::new(log_file, config.log_level);
    let _lock = startup::claim(&rendezvous, config.lock_wait)?;
    startup::drop_ptrace_capability()?;
    let nofile = startup::raise_nofile();
    let signals = startup::signal_fd()?;
    let inherited = config.listener.take();
    let activated = inherited.is_some();
    let listener = match inherited {
        Some(fd) => startup::adopt_listener(fd)?,
        None => startup::listen(&rendezvous)?,
    };
    let mut seed = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
    let ready = config.ready_fd.take();
    log::log!(
        log,
        Info,
        "broker {} listening on {}{} (open files {nofile})",
        std::process::id(),
        rendezvous.socket().display(),
        if activated {
            " (socket from the service manager)"
        } else {
            ""
        }
    );
    let mut broker = state::Broker::new(
        config,
        listener,
        signals,
        log,
        nofile,
        handles::HandleValues::resume(rendezvous.handle_mark(), u32::from_ne_bytes(seed)),
    )
    .map_err(|e| Error::Setup("epoll".into(), e))?;
    startup::notify_ready(ready);
    startup::notify_systemd();
    let result = broker.run().map_err(Error::Loop);
    if !activated {
        let _ = std::fs::remove_file(rendezvous.socket());
    }
    result
}
