//! The broker's state and its event loop: one thread, one epoll set, no runtime.
//!
//! Three kinds of descriptors wake it: the listening socket (a client connects), a connection (a
//! request arrived, or the client left), and a table's pidfd (its process exited, so its table is
//! dropped and every handle in it closed). A signalfd for SIGTERM and SIGINT ends the loop cleanly.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use shalloc_protocol::codes;
use shalloc_protocol::transport::{self, RecvBuf, RecvError};
use shalloc_protocol::wire::{MAX_FRAME, Reply, Request, VERSION};

use crate::Config;
use crate::failure::Failure;
use crate::log::{Log, log};
use crate::process::Process;
use crate::tables::Tables;

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const FIRST_CONNECTION: u64 = 2;
const TABLE_BIT: u64 = 1 << 63;

/// Descriptors the broker keeps for itself beyond blocks: listener, epoll, signals, log, and some
/// slack for pidfds and transient ones.
const RESERVED_FDS: u64 = 64;

/// Frames served from one connection per wake-up, so one busy client cannot starve the others.
const FRAMES_PER_WAKE: usize = 64;

/// How long a request may wait for a table's owner that holds a block between a channel and its
/// slot. An owner does that for microseconds; one stopped in between (a debugger, SIGSTOP) makes
/// requests about its reserved values wait this long, then get "invalid handle".
const PARK_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often requests set aside, and channels waiting to end, are tried again.
const RETRY_TICK: rustix::time::Timespec = rustix::time::Timespec {
    tv_sec: 0,
    tv_nsec: 1_000_000,
};

/// How often the warm blocks that clients keep unused past their deadline are trimmed (and the
/// longest the loop sleeps while any table exists).
const TRIM_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// One client connection, and the process the kernel says is behind it.
#[derive(Debug)]
struct Connection {
    sock: OwnedFd,
    peer: Process,
    greeted: bool,
    /// A request of this connection is set aside (see [`Parked`]): no further frame is read from
    /// it until that one is answered, so its answers keep their order.
    parked: bool,
}

/// A request set aside because its answer waits on a table's owner (see [`PARK_LIMIT`]).
#[derive(Debug)]
struct Parked {
    token: u64,
    id: u32,
    request: Request,
    since: std::time::Instant,
}

/// Everything the broker holds.
#[derive(Debug)]
pub(crate) struct Broker {
    pub config: Config,
    pub uid: u32,
    pub nofile: u64,
    pub tables: Tables,
    pub log: Log,
    epoll: OwnedFd,
    listener: OwnedFd,
    _signals: OwnedFd,
    /// A descriptor kept in reserve to refuse connections when the broker has no other left.
    spare: Option<OwnedFd>,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    pub stats: Stats,
    /// Set by a Stop request: the loop ends after the current batch of events.
    pub stopping: bool,
    /// Blocks to send to their tables' owners ([`Reply::Adopt`]) before the current reply:
    /// (owner pid, handle, block).
    pub outbox: Vec<(u32, u32, std::rc::Rc<crate::block::Block>)>,
    parked: Vec<Parked>,
    /// Channels whose sender left, to end once their owner holds no block between channel and
    /// slot (or after [`PARK_LIMIT`]): (owner pid, channel, since).
    ending: Vec<(u32, u32, std::time::Instant)>,
    /// Set while requests set aside are tried again (see `settle_reserved`).
    pub retrying: bool,
    /// When the pools' idle blocks were last trimmed (see [`crate::trim`]).
    last_trim: std::time::Instant,
}

/// Counters for `shalloc ls`.
#[derive(Debug)]
pub(crate) struct Stats {
    pub started: std::time::Instant,
    /// (name, served, failed) per request kind, in first-seen order.
    pub requests: Vec<(&'static str, u64, u64)>,
}

impl Stats {
    fn record(&mut self, name: &'static str, ok: bool) {
        let failed = u64::from(!ok);
        match self.requests.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += failed;
            }
            None => self.requests.push((name, 1, failed)),
        }
    }
}

/// Why a connection is being closed.
enum Drop {
    Left,
    Violation(String),
}

impl Broker {
    pub fn new(
        config: Config,
        listener: OwnedFd,
        signals: OwnedFd,
        log: Log,
        nofile: u64,
        values: crate::handles::HandleValues,
    ) -> std::io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &signals,
            epoll::EventData::new_u64(SIGNALS),
            epoll::EventFlags::IN,
        )?;
        let tables = Tables::new(values, config.limits.max_handles_per_table);
        Ok(Broker {
            config,
            uid: rustix::process::getuid().as_raw(),
            nofile,
            tables,
            log,
            epoll,
            listener,
            _signals: signals,
            spare: spare_fd(),
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION,
            stats: Stats {
                started: std::time::Instant::now(),
                requests: Vec::new(),
            },
            stopping: false,
            outbox: Vec::new(),
            parked: Vec::new(),
            ending: Vec::new(),
            retrying: false,
            last_trim: std::time::Instant::now(),
        })
    }

    /// The most blocks the broker will hold itself (handles whose owner has not taken them): each
    /// costs a descriptor, and it must keep room for connections, tables and its own.
    pub fn max_live_handles(&self) -> usize {
        self.config.limits.max_handles.min(self.descriptor_room())
    }

    /// How many more descriptors the broker can hold beyond its own, its connections', its tables'
    /// (pidfd and segment) and its channels' (both ends).
    pub(crate) fn descriptor_room(&self) -> usize {
        let room = self.nofile.saturating_sub(
            RESERVED_FDS
                + self.connections.len() as u64
                + 2 * self.tables.table_count() as u64
                + 2 * self.tables.channel_count() as u64,
        );
        usize::try_from(room).unwrap_or(usize::MAX)
    }

    /// Open client connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Registers a table's pidfd, so that the table is dropped when its process exits.
    pub fn watch_table(&mut self, process: &Process) -> Result<(), Failure> {
        let token = TABLE_BIT | u64::from(process.pid);
        epoll::add(
            &self.epoll,
            &process.pidfd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Failure::no_resources(format!("cannot watch process {}: {e}", process.pid)))
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> std::io::Result<()> {
        let mut events = Vec::with_capacity(256);
        loop {
            events.clear();
            let idle = self.connections.is_empty() && self.tables.table_count() == 0;
            let waiting = !self.parked.is_empty() || !self.ending.is_empty();
            let timespec = |d: std::time::Duration| rustix::time::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            };
            // Whether an empty wait means the broker was idle for its limit.
            let mut idle_wait = false;
            let timeout = match self.config.idle_exit {
                _ if waiting => Some(RETRY_TICK),
                Some(limit) if idle => {
                    idle_wait = true;
                    Some(timespec(limit))
                }
                _ if self.tables.table_count() > 0 => Some(timespec(TRIM_TICK)),
                _ => None,
            };
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(0) if idle_wait => {
                    log!(
                        self.log,
                        Info,
                        "idle for {:?} with no clients and no tables; exiting",
                        self.config.idle_exit
                    );
                    return Ok(());
                }
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for event in events.iter().copied() {
                let token = event.data.u64();
                match token {
                    LISTENER => self.accept_all(),
                    SIGNALS => {
                        log!(
                            self.log,
                            Info,
                            "signal received; exiting with {} tables",
                            self.tables.table_count()
                        );
                        return Ok(());
                    }
                    t if t & TABLE_BIT != 0 => {
                        let pid = (t & !TABLE_BIT) as u32;
                        if self.tables.exited(pid) {
                            let (closed, orphans) = self.tables.drop_table(pid);
                            log!(
                                self.log,
                                Debug,
                                "process {pid} exited; closed {closed} handles, told senders of \
                                 {orphans} clean blocks"
                            );
                        }
                    }
                    t => self.serve(t),
                }
            }
            if waiting {
                self.retry_waiting();
            }
            if self.last_trim.elapsed() >= TRIM_TICK {
                self.last_trim = std::time::Instant::now();
                let now = shalloc_protocol::segment::monotonic_ns();
                let trimmed = crate::trim::trim_idle(&self.tables, now);
                if trimmed > 0 {
                    log!(
                        self.log,
                        Debug,
                        "gave back the pages of {trimmed} idle pooled blocks"
                    );
                }
            }
            if self.stopping {
                log!(
                    self.log,
                    Info,
                    "asked to stop; exiting with {} tables",
                    self.tables.table_count()
                );
                return Ok(());
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let sock = match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(sock) => sock,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
                Err(e @ (Errno::MFILE | Errno::NFILE)) => {
                    // Out of descriptors: the pending connection would wake us forever (the
                    // listener is level-triggered). Spend the spare descriptor to accept it and
                    // close it at once, so the client sees a clean refusal instead of a hang.
                    log!(self.log, Warn, "accept failed ({e}); refusing a connection");
                    self.spare = None;
                    if let Ok(sock) = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC)
                    {
                        drop(sock);
                    }
                    self.spare = spare_fd();
                    return;
                }
                Err(e) => {
                    log!(self.log, Warn, "accept failed: {e}");
                    return;
                }
            };
            match peer_process(&sock) {
                Ok(peer) => {
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = epoll::add(
                        &self.epoll,
                        &sock,
                        epoll::EventData::new_u64(token),
                        epoll::EventFlags::IN,
                    ) {
                        log!(self.log, Warn, "cannot watch a connection: {e}");
                        continue;
                    }
                    log!(self.log, Debug, "process {} connected", peer.pid);
                    self.connections.insert(
                        token,
                        Connection {
                            sock,
                            peer,
                            greeted: false,
                            parked: false,
                        },
                    );
                }
                Err(e) => log!(
                    self.log,
                    Warn,
                    "refused a connection whose peer cannot be identified: {e}"
                ),
            }
        }
    }

    /// Serves the frames waiting on one connection.
    fn serve(&mut self, token: u64) {
        let Some(mut conn) = self.connections.remove(&token) else {
            return;
        };
        if conn.parked {
            // Woken once (the registration is one-shot while parked); read on when answered.
            self.connections.insert(token, conn);
            return;
        }
        let mut buf: RecvBuf = [0; MAX_FRAME + 1];
        let mut verdict = None;
        for _ in 0..FRAMES_PER_WAKE {
            if conn.parked {
                break;
            }
            let received = match transport::recv(conn.sock.as_fd(), &mut buf, true) {
                Ok(received) => received,
                Err(RecvError::WouldBlock) => break,
                Err(RecvError::Closed) => {
                    verdict = Some(Drop::Left);
                    break;
                }
                Err(e) => {
                    verdict = Some(Drop::Violation(e.to_string()));
                    break;
                }
            };
            if let Err(why) = self.answer(&mut conn, token, &buf[..received.len], received.fds) {
                verdict = Some(why);
                break;
            }
        }
        if verdict.is_some() {
            self.end_channels_of(token);
        } else if conn.parked {
            // Until its request is answered, wake at most once for it (a hang-up, say).
            let _ = epoll::modify(
                &self.epoll,
                &conn.sock,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::ONESHOT,
            );
        }
        match verdict {
            None => {
                self.connections.insert(token, conn);
            }
            Some(Drop::Left) => log!(self.log, Debug, "process {} disconnected", conn.peer.pid),
            Some(Drop::Violation(why)) => {
                log!(
                    self.log,
                    Warn,
                    "dropped the connection of process {}: {why}",
                    conn.peer.pid
                )
            }
        }
        // Dropping `conn` closes the socket, which also takes it out of the epoll set.
    }

    /// Decodes one frame, runs its handler and sends the reply.
    fn answer(
        &mut self,
        conn: &mut Connection,
        token: u64,
        frame: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), Drop> {
        let (id, request) = Request::decode(frame).map_err(|e| Drop::Violation(e.to_string()))?;
        if fds.len() != request.fds() {
            return Err(Drop::Violation(format!(
                "{} descriptors with {request:?}",
                fds.len()
            )));
        }
        if !conn.greeted {
            return match request {
                Request::Hello { version } if version == VERSION => {
                    conn.greeted = true;
                    let reply = Reply::Hello {
                        version: VERSION,
                        broker_pid: std::process::id(),
                        max_block: self.config.limits.max_block,
                    };
                    send(conn, &reply.encode(id), None)
                }
                Request::Hello { version } => {
                    let reply = Reply::failed(
                        codes::ERROR_REVISION_MISMATCH,
                        format!("the broker speaks protocol {VERSION}, the client {version}"),
                    );
                    let _ = send(conn, &reply.encode(id), None);
                    Err(Drop::Violation(format!("protocol version {version}")))
                }
                _ => Err(Drop::Violation("a request before Hello".into())),
            };
        }
        log!(self.log, Debug, "process {}: {request:?}", conn.peer.pid);
        self.dispatch(conn, token, id, request, fds, None)
    }

    /// Runs a request's handler and sends the reply — or sets the request aside when its answer
    /// waits on a table's owner (`parked_since`: when it was first set aside).
    fn dispatch(
        &mut self,
        conn: &mut Connection,
        token: u64,
        id: u32,
        request: Request,
        mut fds: Vec<OwnedFd>,
        parked_since: Option<std::time::Instant>,
    ) -> Result<(), Drop> {
        let peer = &conn.peer;
        let name = request.name();
        let kept = request.clone();
        let result = match request {
            Request::Hello { .. } => return Err(Drop::Violation("a second Hello".into())),
            Request::Alloc { target, size } => match fds.pop() {
                Some(fd) => self.alloc(peer, target, size, fd),
                None => return Err(Drop::Violation("Alloc without a descriptor".into())),
            },
            Request::Lock {
                handle,
                owner,
                write,
            } => self.lock(peer, handle, owner, write),
            Request::Free { handle, owner } => self.free(peer, handle, owner),
            Request::Map { handle, from, to } => self.map(peer, handle, from, to),
            Request::Stop => self.stop(peer),
            Request::List { verbose } => self.list(peer, verbose),
            Request::Attach => self.attach(peer, token),
            Request::Lease => self.lease(peer),
            Request::LeaseInto { target } => self.lease_into(peer, token, target),
            Request::Adopted { handle } => {
                self.adopted(peer, handle);
                self.stats.record(name, true);
                return Ok(());
            }
        };
        if let Err(failure) = &result {
            let since = parked_since.unwrap_or_else(std::time::Instant::now);
            if failure.owner_busy && since.elapsed() < PARK_LIMIT {
                self.deliver(Some((conn, token)));
                conn.parked = true;
                self.parked.push(Parked {
                    token,
                    id,
                    request: kept,
                    since,
                });
                return Ok(());
            }
        }
        self.stats.record(name, result.is_ok());
        self.deliver(Some((conn, token)));
        let (reply, fd) = result.unwrap_or_else(|failure| {
            log!(
                self.log,
                Debug,
                "process {}: {name} failed: {}",
                conn.peer.pid,
                failure.reason
            );
            (failure.into_reply(), None)
        });
        send(conn, &reply.encode(id), fd.as_ref().map(|f| f.as_fd()))
    }
}

impl Broker {
    /// Sends every block in the outbox to its table's owner, if the owner attached and its
    /// connection is open. A send that fails (the owner does not read) is not an error: the block
    /// stays `Pending` in the broker's keeping, and the owner gets it by locking the handle.
    fn deliver(&mut self, current: Option<(&Connection, u64)>) {
        for (pid, handle, block) in std::mem::take(&mut self.outbox) {
            let Some(to) = self.tables.get(pid).and_then(|t| t.attached) else {
                continue;
            };
            let conn = match current {
                Some((current, token)) if to == token => Some(current),
                _ => self.connections.get(&to),
            };
            let Some(conn) = conn.filter(|c| c.peer.pid == pid) else {
                continue;
            };
            let frame = Reply::Adopt {
                handle,
                size: block.size,
            }
            .encode(shalloc_protocol::wire::UNASKED_ID);
            if let Err(e) = transport::send(conn.sock.as_fd(), &frame, Some(block.fd.as_fd()), true)
            {
                log!(
                    self.log,
                    Debug,
                    "could not send handle {handle:#x} to process {pid}: {e}"
                );
            }
        }
    }
}

impl Broker {
    /// A connection ended, and with it the channels leased through it.
    fn end_channels_of(&mut self, token: u64) {
        for (owner, k) in self.tables.channels_of(token) {
            if !self.end_channel(owner, k, false) {
                self.ending.push((owner, k, std::time::Instant::now()));
            }
        }
        self.deliver(None);
    }

    /// Tries again what waits on a table's owner: requests set aside, and channels to end.
    fn retry_waiting(&mut self) {
        let ending = std::mem::take(&mut self.ending);
        for (owner, k, since) in ending {
            if !self.end_channel(owner, k, since.elapsed() >= PARK_LIMIT) {
                self.ending.push((owner, k, since));
            }
        }
        self.deliver(None);
        self.retrying = true;
        for parked in std::mem::take(&mut self.parked) {
            let Some(mut conn) = self.connections.remove(&parked.token) else {
                continue; // dropped meanwhile
            };
            conn.parked = false;
            let Parked {
                token,
                id,
                request,
                since,
            } = parked;
            let outcome = self.dispatch(&mut conn, token, id, request, Vec::new(), Some(since));
            if outcome.is_err() {
                // The reply could not be sent: the connection is dropped.
                self.end_channels_of(token);
                continue;
            }
            let flags = if conn.parked {
                epoll::EventFlags::ONESHOT
            } else {
                epoll::EventFlags::IN
            };
            let _ = epoll::modify(
                &self.epoll,
                &conn.sock,
                epoll::EventData::new_u64(token),
                flags,
            );
            self.connections.insert(token, conn);
        }
        self.retrying = false;
    }

    /// Sends `message` (with `fd`) unasked to the connection `pid`'s table is attached through,
    /// without waiting: whether it was sent. The connection being served is not reachable here, so
    /// this is only for messages to another process.
    pub(crate) fn tell_owner(&self, pid: u32, message: &Reply, fd: Option<&OwnedFd>) -> bool {
        let Some(to) = self.tables.get(pid).and_then(|t| t.attached) else {
            return false;
        };
        let Some(conn) = self.connections.get(&to).filter(|c| c.peer.pid == pid) else {
            return false;
        };
        let frame = message.encode(shalloc_protocol::wire::UNASKED_ID);
        transport::send(conn.sock.as_fd(), &frame, fd.map(|f| f.as_fd()), true).is_ok()
    }
}

fn spare_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// Sends a reply without waiting: a client that does not read its replies fills its socket
/// buffer, and is dropped rather than allowed to stall the broker.
fn send(
    conn: &Connection,
    frame: &shalloc_protocol::wire::Frame,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), Drop> {
    match transport::send(conn.sock.as_fd(), frame, fd, true) {
        Ok(()) => Ok(()),
        Err(Errno::PIPE) | Err(Errno::CONNRESET) => Err(Drop::Left),
        Err(Errno::AGAIN) => Err(Drop::Violation("it does not read its replies".into())),
        Err(e) => Err(Drop::Violation(format!("send failed: {e}"))),
    }
}

/// The process at the other end of a fresh connection, as the kernel saw it at `connect` time:
/// `SO_PEERPIDFD` pins exactly that process (Linux 6.5+); older kernels fall back to opening a pidfd
/// for the `SO_PEERCRED` pid and checking that the credentials still name it.
fn peer_process(sock: &OwnedFd) -> std::io::Result<Process> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    let pid = cred.pid.as_raw_nonzero().get() as u32;
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut raw: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `raw` and `len` are valid for writes and sized for an int, which SO_PEERPIDFD returns.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut raw).cast(),
            &mut len,
        )
    };
    if rc == 0 && raw >= 0 {
        // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        return Ok(Process { pid, pidfd });
    }
    let process = Process::open(pid).map_err(|f| std::io::Error::other(f.reason))?;
    if process.has_exited() {
        return Err(std::io::Error::other("the peer exited"));
    }
    Ok(process)
}

/// For fuzzing: a fresh broker (logging errors only, handle values from 0x100 up by 4, default
/// limits, 1024 open files) serves `frames` as one connection of this process, each frame with its
/// descriptor, exactly as the event loop would (through `serve`), one frame per wake-up. Returns
/// the reply frames, in order; stops early once the broker dropped the connection or was asked to
/// stop, or when a frame cannot be sent (longer than the socket takes).
pub(crate) fn fuzz_frames(
    frames: &[(&[u8], Option<std::os::fd::BorrowedFd<'_>>)],
) -> std::io::Result<Vec<Vec<u8>>> {
    use rustix::net::{AddressFamily, SocketType};
    let pair = || {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
    };
    let (client, server) = pair()?;
    // The loop is never run: any two descriptors epoll accepts stand in for listener and signals.
    let (listener, signals) = pair()?;
    let log = Log::new(None, crate::log::Level::Error);
    let values = crate::handles::HandleValues::new(0);
    let mut broker = Broker::new(Config::default(), listener, signals, log, 1024, values)?;
    let peer = Process::open(std::process::id()).map_err(|f| std::io::Error::other(f.reason))?;
    let conn = Connection {
        sock: server,
        peer,
        greeted: false,
        parked: false,
    };
    broker.connections.insert(FIRST_CONNECTION, conn);
    let mut replies = Vec::new();
    let mut buf: RecvBuf = [0; MAX_FRAME + 1];
    for (frame, fd) in frames {
        if send_raw(client.as_fd(), frame, *fd).is_err() {
            break;
        }
        broker.serve(FIRST_CONNECTION);
        while let Ok(reply) = transport::recv(client.as_fd(), &mut buf, true) {
            replies.push(buf[..reply.len].to_vec());
        }
        if broker.stopping || !broker.connections.contains_key(&FIRST_CONNECTION) {
            break;
        }
    }
    Ok(replies)
}

/// Sends raw bytes as one record, with `fd` attached when given (a client that need not encode).
fn send_raw(
    sock: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), Errno> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    rustix::net::sendmsg(sock, &[std::io::IoSlice::new(bytes)], &mut control, flags).map(|_| ())
}
