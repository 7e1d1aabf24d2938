//! The client: one connection to the broker per process, shared by all threads.
//!
//! - Thread-safe: a mutex serialises calls on the connection (each is one request and its reply).
//! - Bounded: every call gives up after a timeout (`SHALLOC_TIMEOUT_MS`, default 2000 ms).
//! - Fork-safe: a child never sends on the connection it inherited, whose peer credentials name
//!   its parent; it opens its own on its first call. An `atfork` handler keeps a fork from
//!   copying a lock held by another thread (see [`fork`]).
//! - Self-healing: a connection that broke (the broker died) is replaced on the next call, starting
//!   a new broker on demand, and a request that could not be delivered is retried once.

mod connection;
pub(crate) mod fork;
pub mod spawn;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shalloc_protocol::rendezvous::Rendezvous;
use shalloc_protocol::wire::{Reply, Request};

use crate::error::{Error, Result};
use connection::{CallError, ConnectError, Connection};

/// The environment variable that sets the timeout of every call, in milliseconds.
pub const TIMEOUT_ENV: &str = "SHALLOC_TIMEOUT_MS";

/// Two seconds: every call, a broker's death included, returns within it (a broker answers in
/// microseconds and starts in milliseconds; the margin is for a loaded machine).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);

/// This process's connection, if it has one.
pub(crate) static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);

pub(crate) fn lock_connection() -> MutexGuard<'static, Option<Connection>> {
    CONNECTION.lock().unwrap_or_else(PoisonError::into_inner)
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
    let me = std::process::id();
    let mut guard = lock_connection();
    if guard.as_ref().is_none_or(|c| c.owner_pid != me) {
        *guard = None;
        match connect_running(&our_rendezvous()?, deadline)? {
            Some(conn) => *guard = Some(conn),
            None => return Ok(None),
        }
    }
    let Some(conn) = guard.as_mut() else {
        return Ok(None);
    };
    let result = conn.call(request, None, deadline);
    if result.is_err() {
        *guard = None;
    }
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

/// Runs `f` on this process's connection, opening one when there is none (or only one inherited
/// from a parent), and retrying once on a fresh connection when the old one turns out broken.
fn with_connection<T>(
    deadline: Instant,
    mut f: impl FnMut(&mut Connection) -> Result<T, CallError>,
) -> Result<T> {
    fork::register();
    let me = std::process::id();
    for attempt in 0..2 {
        let mut guard = lock_connection();
        if guard.as_ref().is_some_and(|c| c.owner_pid != me) {
            // Inherited across fork: close our copy, never send on it.
            *guard = None;
        }
        if guard.is_none() {
            // Connecting may fork a broker; do it without holding the lock (the atfork handler
            // takes it).
            drop(guard);
            let conn = establish(deadline)?;
            guard = lock_connection();
            if guard.as_ref().is_none_or(|c| c.owner_pid != me) {
                *guard = Some(conn);
            }
        }
        let Some(conn) = guard.as_mut() else { continue };
        match f(conn) {
            Ok(value) => return Ok(value),
            Err(CallError::Broken(why)) => {
                *guard = None;
                if attempt == 1 {
                    return Err(Error::unavailable(format!("lost the broker: {why}")));
                }
            }
            Err(CallError::Timeout) => {
                // A late reply would be skipped by its id, but a broker that stalls is best left.
                *guard = None;
                return Err(Error::unavailable("the broker did not answer in time"));
            }
            Err(CallError::Protocol(why)) => {
                *guard = None;
                return Err(Error::Protocol { reason: why });
            }
        }
    }
    Err(Error::unavailable("could not reach the broker"))
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
