//! The client: one connection to the broker per process, shared by all threads.
//!
//! - Thread-safe: a mutex serialises calls on the connection (each is one request and its reply).
//! - Bounded: every call gives up after a timeout (`SHALLOC_TIMEOUT_MS`, default 2000 ms).
//! - Fork-safe: a child never sends on the connection it inherited, whose peer credentials name
//!   its parent; it opens its own on its first call. An `atfork` handler keeps a fork from
//!   copying a lock held by another thread (see [`fork`]).
//! - Self-healing: a connection that broke (the broker died) is replaced on the next call, starting
//!   a new broker on demand, and a request that could not be delivered is retried once.
//! - Own table in shared memory: calls on this process's own table need no round trip (see
//!   [`table`]). Every such call first reads what the broker sent without waiting, which also tells
//!   whether the broker is still there: a table does not outlive its broker.

mod connection;
pub(crate) mod fork;
mod lease;
pub mod spawn;
pub(crate) mod table;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shalloc_protocol::rendezvous::Rendezvous;
use shalloc_protocol::wire::{Reply, Request};

use crate::error::{Error, Result};
pub(crate) use connection::Connection;
use connection::{CallError, ConnectError};
use table::OwnTable;

/// The environment variable that sets the timeout of every call, in milliseconds.
pub const TIMEOUT_ENV: &str = "SHALLOC_TIMEOUT_MS";

/// Two seconds: every call, a broker's death included, returns within it (a broker answers in
/// microseconds and starts in milliseconds; the margin is for a loaded machine).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);

/// This process's connection and own table, if it has them.
#[derive(Debug)]
pub(crate) struct Client {
    /// The process the connection and table belong to (0 before the first use).
    pid: u32,
    pub conn: Option<Connection>,
    pub table: Option<OwnTable>,
}

impl Client {
    /// Drops what a forked child inherited from its parent: the connection (whose peer
    /// credentials name the parent) and the parent's table. Called in the child right after
    /// `fork`, and again before every use.
    pub fn forget_inherited(&mut self) {
        let me = crate::own_pid::get();
        if self.pid != me {
            self.pid = me;
            self.conn = None;
            if let Some(table) = self.table.take() {
                table.abandon_in_child();
            }
        }
    }

    /// Records in the own table, for the broker, that this process is forking (see
    /// [`Segment::note_fork`](shalloc_protocol::segment::Segment::note_fork)).
    pub fn note_fork(&self) {
        if let Some(table) = &self.table {
            table.note_fork();
        }
    }

    /// Takes the blocks the broker sent into the own table (when this connection attached one).
    fn settle(&mut self) {
        if let (Some(conn), Some(table)) = (self.conn.as_mut(), self.table.as_mut()) {
            if conn.attached {
                table.adopt(conn);
            }
        }
    }
}

static CLIENT: Mutex<Client> = Mutex::new(Client {
    pid: 0,
    conn: None,
    table: None,
});

pub(crate) fn lock_client() -> MutexGuard<'static, Client> {
    CLIENT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Facts the broker told us when we connected.
#[derive(Debug, Clone, Copy)]
pub struct BrokerInfo {
    /// The broker's process id.
    pub pid: u32,
    /// The largest block it accepts, in bytes.
    pub max_block: u64,
}

/// Sends one request and returns the broker's reply, connecting (and starting a broker) first when
/// needed. A failure reply is turned into its [`Error`].
pub(crate) fn call(
    request: &Request,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(Reply, Option<OwnedFd>)> {
    let deadline = Instant::now() + timeout();
    with_connection(deadline, |conn| conn.call(request, fd, deadline)).and_then(|(reply, fd)| {
        match reply {
            Reply::Failed { code, reason } => Err(Error::from_broker(code, reason)),
            reply => Ok((reply, fd)),
        }
    })
}

/// As [`call`], but never starts a broker: `Ok(None)` when none is running.
pub(crate) fn call_existing(request: &Request) -> Result<Option<(Reply, Option<OwnedFd>)>> {
    let deadline = Instant::now() + timeout();
    let mut guard = lock_client();
    guard.forget_inherited();
    if guard.conn.is_none() {
        match connect_running(&our_rendezvous()?, deadline)? {
            Some(conn) => guard.conn = Some(conn),
            None => return Ok(None),
        }
    }
    let Some(conn) = guard.conn.as_mut() else {
        return Ok(None);
    };
    let result = conn.call(request, None, deadline);
    if result.is_err() {
        guard.conn = None;
    }
    guard.settle();
    match result {
        Ok((Reply::Failed { code, reason }, _)) => Err(Error::from_broker(code, reason)),
        Ok(answer) => Ok(Some(answer)),
        Err(CallError::Broken(_)) => Ok(None),
        Err(CallError::Timeout) => Err(Error::unavailable("the broker did not answer in time")),
        Err(CallError::Protocol(why)) => Err(Error::Protocol { reason: why }),
    }
}

/// Connects if needed and reports what the broker said in its greeting.
pub fn broker_info() -> Result<BrokerInfo> {
    let deadline = Instant::now() + timeout();
    with_connection(deadline, |conn| {
        Ok(BrokerInfo {
            pid: conn.broker_pid,
            max_block: conn.max_block,
        })
    })
}

/// The largest block the broker accepts: from the connection this process holds, else from a new
/// one (as [`broker_info`]). Cheaper than [`broker_info`], which every allocation asks before it
/// makes its block.
pub(crate) fn max_block() -> Result<u64> {
    {
        let mut guard = lock_client();
        guard.forget_inherited();
        if let Some(conn) = guard.conn.as_ref() {
            return Ok(conn.max_block);
        }
    }
    Ok(broker_info()?.max_block)
}

/// Runs `f` on this process's connection, opening one when there is none (or only one inherited
/// from a parent), and retrying once on a fresh connection when the old one turns out broken.
fn with_connection<T>(
    deadline: Instant,
    mut f: impl FnMut(&mut Connection) -> Result<T, CallError>,
) -> Result<T> {
    with_client(deadline, false, |conn, _| f(conn).map_err(Failed::Call))
}

/// Why a function run by [`with_client`] failed.
pub(crate) enum Failed {
    /// The connection failed: it is replaced (and a broken one retried once).
    Call(CallError),
    /// The call itself failed; the connection is fine.
    Refused(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Refused(e)
    }
}

/// Runs `f` on this process's connection and, with `own`, its own table: connects when there is
/// no connection (or only one inherited from a parent), attaches the table when this connection
/// has not, reads what the broker sent, and retries once on a fresh connection when the old one
/// turns out broken.
fn with_client<T>(
    deadline: Instant,
    own: bool,
    mut f: impl FnMut(&mut Connection, Option<&mut OwnTable>) -> Result<T, Failed>,
) -> Result<T> {
    fork::register();
    for attempt in 0..2 {
        let mut guard = lock_client();
        guard.forget_inherited();
        if guard.conn.is_none() {
            // Connecting may fork a broker; do it without holding the lock (the atfork handler
            // takes it).
            drop(guard);
            let conn = establish(deadline)?;
            guard = lock_client();
            guard.forget_inherited();
            if guard.conn.is_none() {
                guard.conn = Some(conn);
            }
        }
        let client = &mut *guard;
        let Some(conn) = client.conn.as_mut() else {
            continue;
        };
        let mut result = Ok(());
        if own {
            // Reading first tells whether the broker still lives: a table never outlives it.
            result = conn.drain();
            if result.is_ok() && !conn.attached {
                match OwnTable::attach(conn, client.table.take(), deadline) {
                    Ok(table) => client.table = Some(table),
                    Err(e) => result = Err(e),
                }
            }
        }
        client.settle();
        let outcome = match (result, client.conn.as_mut()) {
            (Ok(()), Some(conn)) => {
                let table = if own { client.table.as_mut() } else { None };
                f(conn, table)
            }
            (Ok(()), None) => continue,
            (Err(e), _) => Err(Failed::Call(e)),
        };
        client.settle();
        match outcome {
            Ok(value) => return Ok(value),
            Err(Failed::Refused(e)) => return Err(e),
            Err(Failed::Call(CallError::Broken(why))) => {
                client.conn = None;
                if attempt == 1 {
                    return Err(Error::unavailable(format!("lost the broker: {why}")));
                }
            }
            Err(Failed::Call(CallError::Timeout)) => {
                // A late reply would be skipped by its id, but a broker that stalls is best left.
                client.conn = None;
                return Err(Error::unavailable("the broker did not answer in time"));
            }
            Err(Failed::Call(CallError::Protocol(why))) => {
                client.conn = None;
                return Err(Error::Protocol { reason: why });
            }
        }
    }
    Err(Error::unavailable("could not reach the broker"))
}

/// Runs `f` on the own table (and the connection, for the rare call it needs: a new lease of
/// handle values, or a block the broker still holds), connecting and attaching first as needed.
pub(crate) fn with_table<T>(
    mut f: impl FnMut(&mut Connection, &mut OwnTable, Instant) -> Result<T, Failed>,
) -> Result<T> {
    let deadline = Instant::now() + timeout();
    with_client(deadline, true, |conn, table| match table {
        Some(table) => f(conn, table, deadline),
        None => Err(Failed::Call(CallError::Protocol("no own table".into()))),
    })
}

/// Sends one request on a connection already held (inside [`with_table`]); a failure reply
/// becomes its error.
pub(crate) fn call_on(
    conn: &mut Connection,
    request: &Request,
    fd: Option<BorrowedFd<'_>>,
    deadline: Instant,
) -> Result<(Reply, Option<OwnedFd>), Failed> {
    match conn.call(request, fd, deadline).map_err(Failed::Call)? {
        (Reply::Failed { code, reason }, _) => {
            Err(Failed::Refused(Error::from_broker(code, reason)))
        }
        answer => Ok(answer),
    }
}

/// This process's rendezvous, its directory created or checked.
fn our_rendezvous() -> Result<Rendezvous> {
    let rendezvous = Rendezvous::for_this_process()
        .map_err(|e| Error::unavailable(format!("cannot find our PID namespace: {e}")))?;
    rendezvous
        .prepare_dir()
        .map_err(|e| Error::unavailable(e.to_string()))?;
    Ok(rendezvous)
}

/// Opens a connection to the broker if one listens; `Ok(None)` when none does.
fn connect_running(rendezvous: &Rendezvous, deadline: Instant) -> Result<Option<Connection>> {
    match Connection::open(rendezvous, deadline) {
        Ok(conn) => Ok(Some(conn)),
        Err(ConnectError::NotRunning) => Ok(None),
        Err(ConnectError::Failed(why)) => Err(Error::unavailable(why)),
    }
}

/// Opens a connection, starting a broker when none listens.
fn establish(deadline: Instant) -> Result<Connection> {
    let rendezvous = our_rendezvous()?;
    if let Some(conn) = connect_running(&rendezvous, deadline)? {
        return Ok(conn);
    }
    let started = spawn::ensure_broker(&rendezvous, deadline);
    match Connection::open(&rendezvous, deadline) {
        Ok(conn) => Ok(conn),
        Err(ConnectError::NotRunning) => Err(started
            .err()
            .unwrap_or_else(|| Error::unavailable("the broker started but does not listen"))),
        Err(ConnectError::Failed(why)) => Err(Error::unavailable(why)),
    }
}
