//! One client session against the real request handling: a structured list of requests (mostly
//! well-formed, with descriptors good and bad, handles named by the order the broker hands them
//! out, and raw frames among them), sent through a fresh broker over a socketpair. Besides "no
//! panic", every reply is checked against a model of the client's own table:
//! - only the frames the protocol answers get a reply, in order, each echoing its request id, and
//!   nothing comes after a frame that ends the connection;
//! - handle values are handed out as `0x100, 0x104, ...` (the hook's fixed start);
//! - in the caller's own table, Lock, Free and Map succeed exactly on live handles (Lock with the
//!   block's size) and fail with `ERROR_INVALID_HANDLE` otherwise, and a valid Alloc succeeds;
//! - a bad block fails with `ERROR_INVALID_PARAMETER`, an oversized one with
//!   `ERROR_NOT_ENOUGH_MEMORY`;
//! - no request ever succeeds on a handle the broker did not hand out (in any table).

#![no_main]

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use arbitrary::Arbitrary;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use shalloc_protocol::block::class_bytes;
use shalloc_protocol::codes;
use shalloc_protocol::wire::{Reply, Request, VERSION};

/// The first handle value of a broker started by the hook; values step by 4.
const FIRST_HANDLE: u32 = 0x100;
/// Requests per session: enough to build and tear down tables, few enough to stay fast.
const MAX_OPS: usize = 48;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pid {
    Me,
    Zero,
    Init,
    Max,
    Other(u32),
}

impl Pid {
    fn raw(self) -> u32 {
        match self {
            Pid::Me => std::process::id(),
            Pid::Zero => 0,
            Pid::Init => 1,
            Pid::Max => u32::MAX,
            Pid::Other(pid) => pid,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Handle {
    /// The n-th value the broker hands out.
    Nth(u8),
    Raw(u32),
}

impl Handle {
    fn raw(self) -> u32 {
        match self {
            Handle::Nth(n) => FIRST_HANDLE + 4 * u32::from(n),
            Handle::Raw(h) => h,
        }
    }
}

/// The descriptor that travels with a frame.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Desc {
    None,
    /// A memfd of the claimed size plus `size_delta` (raw frames: of `size_delta.unsigned_abs()`
    /// bytes), with the seals of bitmask `seals` (shrink 1, grow 2, seal 4, write 8), opened
    /// read-only or not.
    Memfd {
        seals: u8,
        read_only: bool,
        size_delta: i8,
    },
    Pipe,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Hello {
        version: Option<u32>,
    },
    Alloc {
        target: Pid,
        size: u16,
        desc: Desc,
    },
    Lock {
        handle: Handle,
        owner: Pid,
        write: bool,
    },
    Free {
        handle: Handle,
        owner: Pid,
    },
    Map {
        handle: Handle,
        from: Pid,
        to: Pid,
    },
    Stop,
    List {
        verbose: bool,
    },
    Attach,
    Lease,
    Adopted {
        handle: Handle,
    },
    LeaseInto {
        target: Pid,
    },
    Raw {
        bytes: Vec<u8>,
        desc: Desc,
    },
}

#[derive(Arbitrary, Debug)]
struct Session {
    /// Start with a proper Hello (almost every real session does).
    greet: bool,
    ops: Vec<Op>,
}

/// One frame as sent, and what the model needs to know about its descriptor.
struct Sent {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    /// The block the broker must accept, if the descriptor is one (sealed, read-write, right size).
    block: Option<Block>,
}

/// What the model knows of a block.
#[derive(Debug, Clone, Copy)]
struct Block {
    size: u64,
    /// Write-sealed: it may only be locked read-only.
    frozen: bool,
}

fn memfd(size: u64, seals: u8, read_only: bool) -> OwnedFd {
    let fd = rustix::fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    let mut flags = SealFlags::empty();
    for (bit, seal) in [
        (1, SealFlags::SHRINK),
        (2, SealFlags::GROW),
        (4, SealFlags::SEAL),
        (8, SealFlags::WRITE),
    ] {
        if seals & bit != 0 {
            flags |= seal;
        }
    }
    rustix::fs::fcntl_add_seals(&fd, flags).expect("add seals");
    if read_only {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        return rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .expect("reopen read-only");
    }
    fd
}

/// Makes the descriptor; `claimed` is the size an Alloc frame claims.
fn make_fd(desc: Desc, claimed: Option<u64>) -> (Option<OwnedFd>, Option<Block>) {
    match desc {
        Desc::None => (None, None),
        Desc::Pipe => {
            let (read, _write) = rustix::pipe::pipe().expect("pipe");
            (Some(read), None)
        }
        Desc::Memfd {
            seals,
            read_only,
            size_delta,
        } => {
            let size = match claimed {
                Some(claimed) if claimed <= 1 << 20 => {
                    claimed.saturating_add_signed(i64::from(size_delta))
                }
                _ => u64::from(size_delta.unsigned_abs()),
            };
            let fd = memfd(size, seals, read_only);
            let sealed = seals & 7 == 7;
            // A memfd may be the claimed size or its class long (a recyclable block); the block's
            // size is the claimed one either way.
            let fits = claimed.filter(|&c| size == c || size == class_bytes(c));
            let valid = sealed && !read_only && fits.is_some();
            let block = fits.filter(|_| valid).map(|claimed| Block {
                size: claimed,
                frozen: seals & 8 != 0,
            });
            (Some(fd), block)
        }
    }
}

fn build(session: &Session) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut ops: Vec<&Op> = Vec::new();
    let hello = Op::Hello { version: None };
    if session.greet {
        ops.push(&hello);
    }
    ops.extend(session.ops.iter().take(MAX_OPS));
    for (i, op) in ops.into_iter().enumerate() {
        let id = i as u32 + 1;
        let (request, desc) = match *op {
            Op::Hello { version } => (
                Request::Hello {
                    version: version.unwrap_or(VERSION),
                },
                Desc::None,
            ),
            Op::Alloc { target, size, desc } => (
                Request::Alloc {
                    target: target.raw(),
                    size: u64::from(size),
                },
                desc,
            ),
            Op::Lock {
                handle,
                owner,
                write,
            } => (
                Request::Lock {
                    handle: handle.raw(),
                    owner: owner.raw(),
                    write,
                },
                Desc::None,
            ),
            Op::Free { handle, owner } => (
                Request::Free {
                    handle: handle.raw(),
                    owner: owner.raw(),
                },
                Desc::None,
            ),
            Op::Map { handle, from, to } => (
                Request::Map {
                    handle: handle.raw(),
                    from: from.raw(),
                    to: to.raw(),
                },
                Desc::None,
            ),
            Op::Stop => (Request::Stop, Desc::None),
            Op::List { verbose } => (Request::List { verbose }, Desc::None),
            Op::Attach => (Request::Attach, Desc::None),
            Op::Lease => (Request::Lease, Desc::None),
            Op::Adopted { handle } => (
                Request::Adopted {
                    handle: handle.raw(),
                },
                Desc::None,
            ),
            Op::LeaseInto { target } => (
                Request::LeaseInto {
                    target: target.raw(),
                },
                Desc::None,
            ),
            Op::Raw { ref bytes, desc } => {
                let claimed = match Request::decode(bytes) {
                    Ok((_, Request::Alloc { size, .. })) => Some(size),
                    _ => None,
                };
                let (fd, block) = make_fd(desc, claimed);
                sent.push(Sent {
                    bytes: bytes.clone(),
                    fd,
                    block,
                });
                continue;
            }
        };
        let claimed = match request {
            Request::Alloc { size, .. } => Some(size),
            _ => None,
        };
        let (fd, block) = make_fd(desc, claimed);
        let id = if request.is_notice() {
            shalloc_protocol::wire::UNASKED_ID
        } else {
            id
        };
        sent.push(Sent {
            bytes: request.encode(id).as_bytes().to_vec(),
            fd,
            block,
        });
    }
    sent
}

/// What the model expects of one frame.
enum Expect {
    /// No reply, and the connection ends.
    Dropped,
    /// A reply, checked by `Model::check`; then the session goes on (or not).
    Reply {
        id: u32,
        request: Request,
        block: Option<Block>,
    },
    /// The version refusal, then the connection ends.
    Refused { id: u32 },
    /// A notice: no reply, and the session goes on.
    Silent,
}

struct Model {
    me: u32,
    greeted: bool,
    /// Live handles: (table pid, handle) to their block.
    live: HashMap<(u32, u32), Block>,
    handed_out: u32,
}

impl Model {
    fn expect(&mut self, frame: &Sent) -> Expect {
        let Ok((id, request)) = Request::decode(&frame.bytes) else {
            return Expect::Dropped;
        };
        if usize::from(frame.fd.is_some()) != request.fds() {
            return Expect::Dropped;
        }
        match (&request, self.greeted) {
            (Request::Hello { version }, false) if *version == VERSION => {}
            (Request::Hello { .. }, false) => return Expect::Refused { id },
            (_, false) | (Request::Hello { .. }, true) => return Expect::Dropped,
            (Request::Adopted { .. }, true) => return Expect::Silent,
            _ => {}
        }
        Expect::Reply {
            id,
            request,
            block: frame.block,
        }
    }

    fn next_handle(&mut self, got: u32) {
        let want = FIRST_HANDLE + 4 * self.handed_out;
        assert_eq!(got, want, "handle values are not handed out in order");
        self.handed_out += 1;
    }

    fn known(&self, pid: u32, handle: u32) -> Option<Block> {
        self.live.get(&(pid, handle)).copied()
    }

    /// Checks one reply against the model and updates it; returns whether the session goes on.
    fn check(&mut self, request: &Request, block: Option<Block>, reply: &Reply) -> bool {
        use Reply::{Done, Failed, Handle};
        let me = self.me;
        match (request.clone(), reply) {
            (
                Request::Hello { .. },
                Reply::Hello {
                    version,
                    broker_pid,
                    max_block,
                },
            ) => {
                assert_eq!(*version, VERSION);
                assert_eq!(*broker_pid, me);
                assert_eq!(*max_block, shalloc_broker::DEFAULT_MAX_BLOCK);
                self.greeted = true;
            }
            (Request::Alloc { size, .. }, Failed { code, .. })
                if size > shalloc_broker::DEFAULT_MAX_BLOCK =>
            {
                assert_eq!(*code, codes::ERROR_NOT_ENOUGH_MEMORY, "{reply:?}");
            }
            (Request::Alloc { .. }, _) if block.is_none() => {
                assert!(
                    matches!(reply, Failed { code, .. } if *code == codes::ERROR_INVALID_PARAMETER),
                    "a bad block was not refused: {request:?} -> {reply:?}"
                );
            }
            (Request::Alloc { target, .. }, Handle { handle }) => {
                self.next_handle(*handle);
                if let Some(block) = block {
                    self.live.insert((target, *handle), block);
                }
            }
            (Request::Alloc { target, .. }, Failed { .. }) => {
                assert_ne!(
                    target, me,
                    "a valid Alloc into the caller's table failed: {reply:?}"
                );
            }
            (
                Request::Lock {
                    handle,
                    owner,
                    write,
                },
                Reply::Block { size },
            ) => {
                let Some(known) = self.known(owner, handle) else {
                    panic!("{request:?} locked a handle never handed out");
                };
                assert_eq!(*size, known.size, "{request:?}");
                assert!(
                    !(write && known.frozen),
                    "{request:?}: a frozen block locked writable"
                );
            }
            (Request::Free { handle, owner }, Done) => {
                assert!(
                    self.live.remove(&(owner, handle)).is_some(),
                    "{request:?} freed a handle never handed out"
                );
            }
            (Request::Map { handle, from, to }, Handle { handle: new }) => {
                let Some(block) = self.known(from, handle) else {
                    panic!("{request:?} mapped a handle never handed out");
                };
                self.next_handle(*new);
                self.live.insert((to, *new), block);
            }
            (
                Request::Lock {
                    handle,
                    owner,
                    write,
                },
                Failed { code, .. },
            ) if owner == me => match self.known(me, handle) {
                Some(known) if write && known.frozen => {
                    assert_eq!(*code, codes::ERROR_ACCESS_DENIED, "{request:?}");
                }
                Some(_) => panic!("{request:?} of a live handle failed: {reply:?}"),
                None => assert_eq!(*code, codes::ERROR_INVALID_HANDLE, "{request:?}"),
            },
            (Request::Free { handle, owner }, Failed { code, .. }) if owner == me => {
                assert!(
                    self.known(me, handle).is_none(),
                    "{request:?} failed: {reply:?}"
                );
                assert_eq!(*code, codes::ERROR_INVALID_HANDLE, "{request:?}");
            }
            (Request::Map { handle, from, to }, Failed { code, .. }) if from == me => {
                if self.known(me, handle).is_none() {
                    assert_eq!(*code, codes::ERROR_INVALID_HANDLE, "{request:?}");
                } else {
                    assert_ne!(
                        to, me,
                        "{request:?} within the caller's table failed: {reply:?}"
                    );
                }
            }
            (Request::Lock { .. } | Request::Free { .. } | Request::Map { .. }, Failed { .. }) => {}
            (Request::Stop, Done) => return false,
            (Request::List { .. }, Reply::Listing { size }) => assert!(*size > 0),
            (Request::Attach, Reply::Table { capacity }) => {
                assert_eq!(
                    *capacity as usize,
                    shalloc_broker::DEFAULT_MAX_HANDLES_PER_TABLE
                );
            }
            (Request::Lease, Reply::Lease { start, count }) => {
                // A lease takes the next values in order, like handles do.
                assert!(*count > 0);
                assert_eq!(*start, FIRST_HANDLE + 4 * self.handed_out, "{reply:?}");
                self.handed_out += count;
            }
            // The session's process is the only one connected, so no other table is attached and
            // no lease can be granted (its own table is leased with Lease).
            (Request::LeaseInto { .. }, Failed { .. }) => {}
            _ => panic!("{request:?} was answered with {reply:?}"),
        }
        true
    }
}

libfuzzer_sys::fuzz_target!(|session: Session| {
    let sent = build(&session);
    let frames: Vec<(&[u8], Option<std::os::fd::BorrowedFd<'_>>)> = sent
        .iter()
        .map(|s| (s.bytes.as_slice(), s.fd.as_ref().map(|fd| fd.as_fd())))
        .collect();
    let replies = shalloc_broker::fuzz_frames(&frames).expect("a broker for the session");

    let mut model = Model {
        me: std::process::id(),
        greeted: false,
        live: HashMap::new(),
        handed_out: 0,
    };
    // Blocks sent unasked to the table's owner (after an Attach) are not replies; each must be a
    // well-formed Adopt of a block the model knows in the caller's own table.
    let mut unasked = 0;
    let replies: Vec<&Vec<u8>> = replies
        .iter()
        .filter(|r| match Reply::decode(r) {
            Ok((0, Reply::Adopt { .. })) => {
                unasked += 1;
                false
            }
            Ok((0, other)) => panic!("an unasked frame that is not Adopt: {other:?}"),
            _ => true,
        })
        .collect();
    let _ = unasked;
    let mut replies = replies.into_iter();
    for frame in &sent {
        // The hook stops sending at an empty frame only through the broker: an empty record
        // reads as the client leaving.
        if frame.bytes.is_empty() && frame.fd.is_none() {
            break;
        }
        match model.expect(frame) {
            Expect::Dropped => break,
            Expect::Silent => {}
            Expect::Refused { id } => {
                let reply = replies.next().expect("the version refusal");
                let decoded = Reply::decode(reply).expect("the broker's reply decodes");
                assert!(
                    matches!(decoded, (got, Reply::Failed { code, .. })
                        if got == id && code == codes::ERROR_REVISION_MISMATCH),
                    "{decoded:?}"
                );
                break;
            }
            Expect::Reply { id, request, block } => {
                let reply = replies
                    .next()
                    .unwrap_or_else(|| panic!("no reply to {request:?}"));
                let (got, reply) = Reply::decode(reply).expect("the broker's reply decodes");
                assert_eq!(got, id, "the reply to {request:?} does not echo its id");
                if !model.check(&request, block, &reply) {
                    break;
                }
            }
        }
    }
    assert!(replies.next().is_none(), "a reply after the session ended");
});
