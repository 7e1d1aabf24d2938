//! One connection to the broker: connect, greet, and ask one question at a time.
//!
//! Every wait is bounded by a deadline: sends by `SO_SNDTIMEO`, replies by `poll`. A reply that
//! answers an older request (one that timed out) is skipped by its request id. Blocks the broker
//! sends unasked ([`Reply::Adopt`]: another process put them into our table) and the channels it
//! opens into our table ([`Reply::Leased`], [`Reply::Unleased`]) are kept in [`Connection::unasked`]
//! until the own table takes them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use shalloc_protocol::rendezvous::Rendezvous;
use shalloc_protocol::transport::{self, RecvError};
use shalloc_protocol::wire::{MAX_FRAME, Reply, Request, UNASKED_ID, VERSION};

/// Why a call on a connection failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection broke (the broker died or closed it): a new connection may succeed.
    Broken(String),
    /// No answer before the deadline.
    Timeout,
    /// The broker said something that makes no sense here.
    Protocol(String),
}

/// Why connecting failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Nothing listens on the socket: a broker may be started.
    NotRunning,
    /// Something else went wrong; starting a broker would not help.
    Failed(String),
}

/// A message the broker sent unasked, for the own table.
#[derive(Debug)]
pub(crate) enum Unasked {
    /// A block another process put into our table: (handle, size, descriptor).
    Adopt(u32, u64, OwnedFd),
    /// Channel `k` into our table (its receiving end): another process leased values of it.
    Leased(u32, OwnedFd),
    /// Channel `k` is finished.
    Unleased(u32),
}

/// A greeted connection to the broker.
#[derive(Debug)]
pub(crate) struct Connection {
    sock: OwnedFd,
    next_id: u32,
    /// The broker's pid, from its greeting.
    pub broker_pid: u32,
    /// The largest block the broker accepts.
    pub max_block: u64,
    /// Whether this connection asked for our table (the broker sends our blocks on it).
    pub attached: bool,
    /// What the broker sent unasked, not yet taken into the own table.
    pub unasked: Vec<Unasked>,
    /// Values of other processes' tables leased to this connection.
    pub leases: super::lease::Leases,
}

impl Connection {
    /// Connects to the broker of `rendezvous` and exchanges greetings.
    pub fn open(rendezvous: &Rendezvous, deadline: Instant) -> Result<Connection, ConnectError> {
        let sock = connect(rendezvous)?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Send,
            Some(timeout.max(std::time::Duration::from_millis(1))),
        )
        .map_err(|e| ConnectError::Failed(format!("setting the send timeout: {e}")))?;
        let mut conn = Connection {
            sock,
            next_id: 1,
            broker_pid: 0,
            max_block: 0,
            attached: false,
            unasked: Vec::new(),
            leases: super::lease::Leases::default(),
        };
        match conn.call(&Request::Hello { version: VERSION }, None, deadline) {
            Ok((
                Reply::Hello {
                    version,
                    broker_pid,
                    max_block,
                },
                _,
            )) if version == VERSION => {
                conn.broker_pid = broker_pid;
                conn.max_block = max_block;
                Ok(conn)
            }
            Ok((Reply::Failed { reason, .. }, _)) => Err(ConnectError::Failed(format!(
                "the broker refused us: {reason}"
            ))),
            Ok((other, _)) => Err(ConnectError::Failed(format!(
                "unexpected greeting {other:?}"
            ))),
            // Accepted, then closed without a greeting: a broker that is exiting (killed, idle,
            // stopped). For the caller that is the same as none running: start (or wait for) the
            // next one.
            Err(CallError::Broken(_)) => Err(ConnectError::NotRunning),
            Err(CallError::Timeout) => Err(ConnectError::Failed(
                "the broker did not answer in time".into(),
            )),
            Err(CallError::Protocol(why)) => Err(ConnectError::Failed(why)),
        }
    }

    /// Sends `request` (with `fd` attached, when given) and waits for its reply until `deadline`.
    pub fn call(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<(Reply, Option<OwnedFd>), CallError> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1).max(1);
        match transport::send(self.sock.as_fd(), &request.encode(id), fd, false) {
            Ok(()) => {}
            Err(Errno::AGAIN) => return Err(CallError::Timeout),
            Err(e) => return Err(CallError::Broken(format!("send: {e}"))),
        }
        loop {
            self.wait_readable(deadline)?;
            match self.receive_one(id) {
                Ok(Some(answer)) => return Ok(answer),
                // Something else, or nothing after all: wait again (the deadline bounds it).
                Ok(None) | Err(CallError::Timeout) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a notice: a request that gets no reply.
    pub fn notify(&mut self, request: &Request) -> Result<(), CallError> {
        match transport::send(self.sock.as_fd(), &request.encode(UNASKED_ID), None, false) {
            Ok(()) => Ok(()),
            Err(Errno::AGAIN) => Err(CallError::Timeout),
            Err(e) => Err(CallError::Broken(format!("send: {e}"))),
        }
    }

    /// Reads every frame already waiting, without blocking: collects the blocks the broker sent
    /// and finds out whether the broker is still there (`Broken` when it closed the connection).
    pub fn drain(&mut self) -> Result<(), CallError> {
        loop {
            match self.receive_one(UNASKED_ID) {
                Ok(_) => {}
                Err(CallError::Timeout) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one frame if one is waiting (`Timeout` when none is, without waiting): the answer to request `id`
    /// comes back, a block sent unasked goes into `adopts`, anything else (a late answer) is
    /// skipped.
    fn receive_one(&mut self, id: u32) -> Result<Option<(Reply, Option<OwnedFd>)>, CallError> {
        let mut buf = [0u8; MAX_FRAME + 1];
        let mut received = match transport::recv(self.sock.as_fd(), &mut buf, true) {
            Ok(r) => r,
            Err(RecvError::WouldBlock) => return Err(CallError::Timeout),
            Err(RecvError::Closed) => {
                return Err(CallError::Broken("the broker closed the connection".into()));
            }
            Err(e) => return Err(CallError::Protocol(e.to_string())),
        };
        let (reply_id, reply) =
            Reply::decode(&buf[..received.len]).map_err(|e| CallError::Protocol(e.to_string()))?;
        if received.fds.len() != reply.fds() {
            return Err(CallError::Protocol(format!(
                "{} descriptors with {reply:?}",
                received.fds.len()
            )));
        }
        if reply_id == UNASKED_ID {
            match (reply, received.fds.pop()) {
                (Reply::Adopt { handle, size }, Some(fd)) => {
                    self.unasked.push(Unasked::Adopt(handle, size, fd));
                }
                (Reply::Leased { channel, .. }, Some(fd)) => {
                    self.unasked.push(Unasked::Leased(channel, fd));
                }
                (Reply::Unleased { channel }, _) => self.unasked.push(Unasked::Unleased(channel)),
                _ => {}
            }
            return Ok(None);
        }
        if reply_id != id {
            return Ok(None); // the late answer to a request that timed out
        }
        Ok(Some((reply, received.fds.pop())))
    }

    fn wait_readable(&self, deadline: Instant) -> Result<(), CallError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallError::Timeout);
            }
            let timeout = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Err(CallError::Timeout),
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(CallError::Broken(format!("poll: {e}"))),
            }
        }
    }
}

/// Opens a socket connected to the broker's listening socket.
pub(crate) fn connect(rendezvous: &Rendezvous) -> Result<OwnedFd, ConnectError> {
    let path = rendezvous.socket();
    // connect() follows symlinks; a socket path that is one was not made by a broker.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ConnectError::Failed(format!(
            "{} is a symlink; refusing to follow it",
            path.display()
        )));
    }
    let addr = SocketAddrUnix::new(&path).map_err(|e| {
        ConnectError::Failed(format!("socket path {} unusable: {e}", path.display()))
    })?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| ConnectError::Failed(format!("socket: {e}")))?;
    loop {
        return match rustix::net::connect(&sock, &addr) {
            Ok(()) => Ok(sock),
            Err(Errno::INTR) => continue,
            Err(Errno::NOENT) | Err(Errno::CONNREFUSED) => Err(ConnectError::NotRunning),
            Err(e) => Err(ConnectError::Failed(format!(
                "connecting to {}: {e}",
                path.display()
            ))),
        };
    }
}
