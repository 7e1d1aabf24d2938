//! The messages, and their byte layout.
//!
//! Every frame is one `SOCK_SEQPACKET` record: an 8-byte header, then a body whose length is fixed
//! by the kind (only a failure's reason text varies, and it is bounded). All integers are
//! little-endian.
//!
//! ```text
//! header: kind u16 | flags u16 (0) | request id u32
//! ```
//!
//! Kinds `0x0001..0x3fff` are requests (client to broker), `0x8000..` replies, each echoing the id
//! of the request it answers. Kinds `0x4000..0x7fff` are messages the broker sends unasked
//! ([`Reply::Adopt`], [`Reply::Leased`], [`Reply::Unleased`]); they carry request id 0. A request
//! with id 0 is a *notice* ([`Request::Adopted`]): it gets no reply, and only notices may use id 0.
//! Kind `0x2001` is the one frame that travels between two clients, over a channel the broker set
//! up ([`Delivery`], see [`crate::channel`]); it too carries id 0.
//!
//! Decoding never panics and never trusts a length: a frame is either exactly right for its kind or
//! a [`DecodeError`].

/// The protocol version spoken by this crate. The first frame on every connection is a
/// [`Request::Hello`] carrying it; a broker that speaks another version refuses the connection.
pub const VERSION: u32 = 6;

/// The largest frame either side ever sends. A receiver reads into a buffer one byte larger and
/// treats anything that fills it as oversized.
pub const MAX_FRAME: usize = 256;

/// The longest reason text a [`Reply::Failed`] carries; longer reasons are cut at a char boundary.
pub const MAX_REASON: usize = MAX_FRAME - HEADER - 8;

/// The request id reserved for messages the broker sends unasked.
pub const UNASKED_ID: u32 = 0;

const HEADER: usize = 8;

/// A request from a client to the broker.
///
/// Process ids here are *names of tables*, never the caller's identity: the broker learns who is
/// calling from the kernel (the connection's peer credentials), not from any field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The first frame of a connection.
    Hello {
        /// The client's [`VERSION`].
        version: u32,
    },
    /// Put the sealed memfd that travels with this frame into `target`'s table.
    Alloc {
        /// The process whose table receives the new handle.
        target: u32,
        /// The block's size in bytes; must equal the memfd's size.
        size: u64,
    },
    /// Send back the memfd of `handle` in `owner`'s table, for the caller to map.
    Lock {
        /// The handle, as valid in `owner`'s table.
        handle: u32,
        /// The process whose table holds `handle`.
        owner: u32,
        /// Whether the caller wants to map it writable (it must then be allowed to write).
        write: bool,
    },
    /// Close `handle` in `owner`'s table.
    Free {
        /// The handle to close.
        handle: u32,
        /// The process whose table holds `handle`.
        owner: u32,
    },
    /// Duplicate `handle` from `from`'s table into `to`'s.
    Map {
        /// The handle, as valid in `from`'s table.
        handle: u32,
        /// The process whose table holds `handle`.
        from: u32,
        /// The process whose table receives the duplicate.
        to: u32,
    },
    /// Ask the broker to exit cleanly (answered with [`Reply::Done`] first).
    Stop,
    /// Ask for a description of the broker and its tables, answered with [`Reply::Listing`].
    List {
        /// Include every handle, not only per-table totals.
        verbose: bool,
    },
    /// Ask for the caller's own table in shared memory (see [`crate::segment`]), answered with
    /// [`Reply::Table`]; the broker then sends [`Reply::Adopt`] for every block it holds for the
    /// caller, now and whenever another process puts one into the caller's table.
    Attach,
    /// Ask for handle values the caller may give to blocks it puts into its own table itself,
    /// answered with [`Reply::Lease`].
    Lease,
    /// A notice (request id 0, no reply): the caller took the descriptor of `handle`, which the
    /// broker sent with [`Reply::Adopt`], into its own keeping, so the broker may close its copy.
    Adopted {
        /// The handle, in the caller's own table.
        handle: u32,
    },
    /// Ask for handle values of `target`'s table, for blocks the caller will send its owner itself
    /// over a channel (see [`crate::channel`]), answered with [`Reply::Granted`]. Refused unless
    /// the caller may put blocks into that table and its owner attached it.
    LeaseInto {
        /// The process whose table the values belong to (not the caller).
        target: u32,
    },
}

/// The broker's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The answer to [`Request::Hello`].
    Hello {
        /// The broker's [`VERSION`].
        version: u32,
        /// The broker's process id, in the namespace both share.
        broker_pid: u32,
        /// The largest block the broker accepts, in bytes.
        max_block: u64,
    },
    /// A handle value: the answer to [`Request::Alloc`] and [`Request::Map`].
    Handle {
        /// The new handle, valid in the table the request named.
        handle: u32,
    },
    /// The answer to [`Request::Lock`]: the block's memfd travels with this frame.
    Block {
        /// The block's size in bytes.
        size: u64,
    },
    /// Success with nothing to say: the answer to [`Request::Free`] and [`Request::Stop`].
    Done,
    /// The answer to [`Request::List`]: a sealed memfd with the listing travels with this frame
    /// (see [`crate::listing`]), so a listing of any length is one frame.
    Listing {
        /// The listing's length in bytes.
        size: u64,
    },
    /// The answer to [`Request::Attach`]: the table's segment travels with this frame.
    Table {
        /// The segment's number of slots: the table's handle limit.
        capacity: u32,
    },
    /// The answer to [`Request::Lease`]: `count` handle values from `start`, stepping by 4.
    Lease {
        /// The first value.
        start: u32,
        /// How many values.
        count: u32,
    },
    /// The answer to [`Request::LeaseInto`]: the values `start + 4 * i` for every bit `i` set in
    /// `mask` (`i < count`) are reserved for the caller in the target's table. The sending end of
    /// the channel to the target travels with this frame.
    Granted {
        /// The first value of the run.
        start: u32,
        /// The run's length (at most 64).
        count: u32,
        /// Which values of the run are reserved (bit `i` for `start + 4 * i`).
        mask: u64,
    },
    /// Sent unasked (request id 0) to a table's owner: values of its table were leased to another
    /// process, which will send their blocks over channel number `channel`. The receiving end of
    /// that channel travels with this frame (the same channel for every lease to that process).
    Leased {
        /// The channel's number in the owner's table (never 0).
        channel: u32,
        /// The first value of the run.
        start: u32,
        /// The run's length (at most 64).
        count: u32,
        /// Which values of the run are reserved.
        mask: u64,
    },
    /// Sent unasked to a table's owner: channel `channel` is finished (its process left); the
    /// broker took whatever was still on it, so the owner may close its end.
    Unleased {
        /// The channel's number in the owner's table.
        channel: u32,
    },
    /// Sent unasked (request id 0) to a table's owner: the block of `handle`, which another process
    /// put into the owner's table, travels with this frame for the owner to keep.
    Adopt {
        /// The handle, in the receiver's own table.
        handle: u32,
        /// The block's size in bytes.
        size: u64,
    },
    /// The request failed.
    Failed {
        /// The Win32 error code (see [`crate::codes`]).
        code: u32,
        /// Why, in words, for a person to read.
        reason: String,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is shorter than the header.
    #[error("frame of {0} bytes is shorter than the header")]
    Truncated(usize),
    /// The kind is not one this side understands.
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// The body's length does not match its kind.
    #[error("message kind {kind:#06x} with a body of {len} bytes")]
    BadLength {
        /// The frame's kind.
        kind: u16,
        /// The body length that arrived.
        len: usize,
    },
    /// A field holds a value its kind does not allow (flags set, an id of 0, a bad boolean).
    #[error("message kind {kind:#06x} has an invalid field: {what}")]
    BadField {
        /// The frame's kind.
        kind: u16,
        /// Which field, in words.
        what: &'static str,
    },
}

/// An encoded frame, ready to send: a fixed buffer, no allocation.
#[derive(Clone)]
pub struct Frame {
    buf: [u8; MAX_FRAME],
    len: usize,
}

impl Frame {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn new(kind: u16, id: u32) -> Self {
        let mut frame = Frame {
            buf: [0; MAX_FRAME],
            len: 0,
        };
        frame.put(&kind.to_le_bytes());
        frame.put(&0u16.to_le_bytes());
        frame.put(&id.to_le_bytes());
        frame
    }

    fn put(&mut self, bytes: &[u8]) {
        // Every caller in this module stays within MAX_FRAME by construction (fixed bodies, and a
        // reason cut to MAX_REASON), so the slice below never goes out of bounds.
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn u32(mut self, v: u32) -> Self {
        self.put(&v.to_le_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Self {
        self.put(&v.to_le_bytes());
        self
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("bytes", &self.as_bytes())
            .finish()
    }
}

mod kind {
    pub const HELLO: u16 = 0x0001;
    pub const ALLOC: u16 = 0x0002;
    pub const LOCK: u16 = 0x0003;
    pub const FREE: u16 = 0x0004;
    pub const MAP: u16 = 0x0005;
    pub const STOP: u16 = 0x0006;
    pub const LIST: u16 = 0x0007;
    pub const ATTACH: u16 = 0x0008;
    pub const LEASE: u16 = 0x0009;
    pub const ADOPTED: u16 = 0x000a;
    pub const LEASE_INTO: u16 = 0x000b;

    pub const DELIVERY: u16 = 0x2001;
    pub const RETURNED: u16 = 0x2002;
    pub const ORPHANED: u16 = 0x2003;

    pub const U_ADOPT: u16 = 0x4001;
    pub const U_LEASED: u16 = 0x4002;
    pub const U_UNLEASED: u16 = 0x4003;

    pub const R_HELLO: u16 = 0x8001;
    pub const R_HANDLE: u16 = 0x8002;
    pub const R_BLOCK: u16 = 0x8003;
    pub const R_DONE: u16 = 0x8004;
    pub const R_LISTING: u16 = 0x8005;
    pub const R_TABLE: u16 = 0x8006;
    pub const R_LEASE: u16 = 0x8007;
    pub const R_GRANTED: u16 = 0x8008;
    pub const R_FAILED: u16 = 0x80ff;
}

/// Reads the body every unasked frame with a block has (`handle | 0 | size`, request id 0).
fn unasked_block(kind: u16, id: u32, body: &[u8]) -> Result<(u32, u64), DecodeError> {
    let mut f = body_of(kind, body, 16)?;
    let handle = f.u32();
    if f.u32() != 0 || id != UNASKED_ID {
        return Err(DecodeError::BadField {
            kind,
            what: "padding and request id must be 0",
        });
    }
    Ok((handle, f.u64()))
}

/// Checks a lease run: at most 64 values, and no bit of `mask` past `count`.
fn lease_run(kind: u16, count: u32, mask: u64) -> Result<(), DecodeError> {
    let beyond = if count >= 64 { 0 } else { mask >> count };
    if count > 64 || beyond != 0 {
        return Err(DecodeError::BadField {
            kind,
            what: "a lease run is at most 64 values, its mask within them",
        });
    }
    Ok(())
}

/// The values of a lease run: `start + 4 * i` for every bit `i` set in `mask`.
pub fn lease_values(start: u32, mask: u64) -> impl Iterator<Item = u32> {
    (0..64u32)
        .filter(move |i| mask & (1 << i) != 0)
        .map(move |i| start.wrapping_add(i * crate::segment::HANDLE_STEP))
}

/// The bit of a [`Delivery::tag`] by which the sender asks for the block back once the receiver
/// is done with it (it keeps the block for that; without it, a return would only be ignored).
pub const TAG_WANTS_RETURN: u32 = 1 << 31;

/// The one frame a client sends another, over a channel (see [`crate::channel`]): the block of
/// `handle`, a value leased to the sender in the receiver's table, travels with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The handle, in the receiver's table.
    pub handle: u32,
    /// The sender's tag for this delivery, echoed in the block's [`Returned`]: a handle value
    /// can be leased again while the receiver still holds a view of its earlier block, so the
    /// value alone cannot say which block came back. Its top bit ([`TAG_WANTS_RETURN`]) says
    /// whether the sender wants the block back at all. The broker ignores it.
    pub tag: u32,
    /// The block's size in bytes; the receiver checks it against the memfd.
    pub size: u64,
}

impl Delivery {
    /// Encodes the delivery (request id 0).
    pub fn encode(&self) -> Frame {
        Frame::new(kind::DELIVERY, UNASKED_ID)
            .u32(self.handle)
            .u32(self.tag)
            .u64(self.size)
    }

    /// Decodes one frame.
    pub fn decode(bytes: &[u8]) -> Result<Delivery, DecodeError> {
        let (k, id, body) = header(bytes)?;
        if k != kind::DELIVERY {
            return Err(DecodeError::UnknownKind(k));
        }
        if id != UNASKED_ID {
            return Err(DecodeError::BadField {
                kind: k,
                what: "request id must be 0",
            });
        }
        let mut f = body_of(k, body, 16)?;
        Ok(Delivery {
            handle: f.u32(),
            tag: f.u32(),
            size: f.u64(),
        })
    }
}

/// The frame a channel's receiver sends back to its sender (see [`crate::channel`]): the block
/// the sender delivered under `handle` is closed in the receiver's table, no view of it is left
/// there, and it never left the receiver, so the sender may recycle it — for this receiver only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned {
    /// The handle the block was delivered under.
    pub handle: u32,
    /// The [`Delivery::tag`] it came with.
    pub tag: u32,
}

impl Returned {
    /// Encodes the frame (request id 0).
    pub fn encode(&self) -> Frame {
        Frame::new(kind::RETURNED, UNASKED_ID)
            .u32(self.handle)
            .u32(self.tag)
    }

    /// Decodes one frame.
    pub fn decode(bytes: &[u8]) -> Result<Returned, DecodeError> {
        let (k, id, body) = header(bytes)?;
        if k != kind::RETURNED {
            return Err(DecodeError::UnknownKind(k));
        }
        if id != UNASKED_ID {
            return Err(DecodeError::BadField {
                kind: k,
                what: "request id must be 0",
            });
        }
        let mut f = body_of(k, body, 8)?;
        Ok(Returned {
            handle: f.u32(),
            tag: f.u32(),
        })
    }
}

/// The frame the broker sends a channel's sender, on the receiver's end, when the receiver exited
/// (see [`crate::channel`]): the block delivered under `handle` was still open in the receiver's
/// table, the broker never reopened it for anyone, and the receiver never forked. With the
/// receiver gone, no view of it is left anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphaned {
    /// The handle the block was delivered under.
    pub handle: u32,
}

impl Orphaned {
    /// Encodes the frame (request id 0).
    pub fn encode(&self) -> Frame {
        Frame::new(kind::ORPHANED, UNASKED_ID)
            .u32(self.handle)
            .u32(0)
    }

    /// Decodes one frame.
    pub fn decode(bytes: &[u8]) -> Result<Orphaned, DecodeError> {
        let (k, id, body) = header(bytes)?;
        if k != kind::ORPHANED {
            return Err(DecodeError::UnknownKind(k));
        }
        let mut f = body_of(k, body, 8)?;
        let handle = f.u32();
        if f.u32() != 0 || id != UNASKED_ID {
            return Err(DecodeError::BadField {
                kind: k,
                what: "padding and request id must be 0",
            });
        }
        Ok(Orphaned { handle })
    }
}

/// Reads fixed-width little-endian fields off a body whose length was already checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_le_bytes([head[0], head[1], head[2], head[3]])
    }

    fn u64(&mut self) -> u64 {
        let lo = u64::from(self.u32());
        let hi = u64::from(self.u32());
        lo | (hi << 32)
    }
}

/// Splits a frame into (kind, id, body) after checking the header.
fn header(bytes: &[u8]) -> Result<(u16, u32, &[u8]), DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let kind = u16::from_le_bytes([bytes[0], bytes[1]]);
    let flags = u16::from_le_bytes([bytes[2], bytes[3]]);
    let id = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if flags != 0 {
        return Err(DecodeError::BadField {
            kind,
            what: "flags must be 0",
        });
    }
    Ok((kind, id, &bytes[HEADER..]))
}

fn body_of(kind: u16, body: &[u8], len: usize) -> Result<Fields<'_>, DecodeError> {
    if body.len() == len {
        Ok(Fields(body))
    } else {
        Err(DecodeError::BadLength {
            kind,
            len: body.len(),
        })
    }
}

impl Request {
    /// The request's name, for logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Alloc { .. } => "alloc",
            Request::Lock { .. } => "lock",
            Request::Free { .. } => "free",
            Request::Map { .. } => "map",
            Request::Stop => "stop",
            Request::List { .. } => "list",
            Request::Attach => "attach",
            Request::Lease => "lease",
            Request::Adopted { .. } => "adopted",
            Request::LeaseInto { .. } => "lease-into",
        }
    }

    /// Whether this is a notice: sent with request id 0 and never answered.
    pub fn is_notice(&self) -> bool {
        matches!(self, Request::Adopted { .. })
    }

    /// How many file descriptors must travel with this request.
    pub fn fds(&self) -> usize {
        match self {
            Request::Alloc { .. } => 1,
            _ => 0,
        }
    }

    /// Encodes the request with request id `id` (which must be [`UNASKED_ID`] exactly for notices).
    pub fn encode(&self, id: u32) -> Frame {
        match *self {
            Request::Hello { version } => Frame::new(kind::HELLO, id).u32(version),
            Request::Alloc { target, size } => {
                Frame::new(kind::ALLOC, id).u32(target).u32(0).u64(size)
            }
            Request::Lock {
                handle,
                owner,
                write,
            } => Frame::new(kind::LOCK, id)
                .u32(handle)
                .u32(owner)
                .u32(u32::from(write)),
            Request::Free { handle, owner } => Frame::new(kind::FREE, id).u32(handle).u32(owner),
            Request::Map { handle, from, to } => {
                Frame::new(kind::MAP, id).u32(handle).u32(from).u32(to)
            }
            Request::Stop => Frame::new(kind::STOP, id),
            Request::List { verbose } => Frame::new(kind::LIST, id).u32(u32::from(verbose)),
            Request::Attach => Frame::new(kind::ATTACH, id),
            Request::Lease => Frame::new(kind::LEASE, id),
            Request::Adopted { handle } => Frame::new(kind::ADOPTED, id).u32(handle),
            Request::LeaseInto { target } => Frame::new(kind::LEASE_INTO, id).u32(target),
        }
    }

    /// Decodes one frame into its request id and request.
    pub fn decode(bytes: &[u8]) -> Result<(u32, Request), DecodeError> {
        let (k, id, body) = header(bytes)?;
        if (id == UNASKED_ID) != (k == kind::ADOPTED) {
            return Err(DecodeError::BadField {
                kind: k,
                what: "request id 0 is for notices, and notices use only id 0",
            });
        }
        let request = match k {
            kind::HELLO => {
                let mut f = body_of(k, body, 4)?;
                Request::Hello { version: f.u32() }
            }
            kind::ALLOC => {
                let mut f = body_of(k, body, 16)?;
                let target = f.u32();
                if f.u32() != 0 {
                    return Err(DecodeError::BadField {
                        kind: k,
                        what: "padding must be 0",
                    });
                }
                Request::Alloc {
                    target,
                    size: f.u64(),
                }
            }
            kind::LOCK => {
                let mut f = body_of(k, body, 12)?;
                let (handle, owner) = (f.u32(), f.u32());
                let write = match f.u32() {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::BadField {
                            kind: k,
                            what: "write must be 0 or 1",
                        });
                    }
                };
                Request::Lock {
                    handle,
                    owner,
                    write,
                }
            }
            kind::FREE => {
                let mut f = body_of(k, body, 8)?;
                Request::Free {
                    handle: f.u32(),
                    owner: f.u32(),
                }
            }
            kind::MAP => {
                let mut f = body_of(k, body, 12)?;
                Request::Map {
                    handle: f.u32(),
                    from: f.u32(),
                    to: f.u32(),
                }
            }
            kind::STOP => {
                body_of(k, body, 0)?;
                Request::Stop
            }
            kind::LIST => {
                let mut f = body_of(k, body, 4)?;
                let verbose = match f.u32() {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::BadField {
                            kind: k,
                            what: "verbose must be 0 or 1",
                        });
                    }
                };
                Request::List { verbose }
            }
            kind::ATTACH => {
                body_of(k, body, 0)?;
                Request::Attach
            }
            kind::LEASE => {
                body_of(k, body, 0)?;
                Request::Lease
            }
            kind::ADOPTED => {
                let mut f = body_of(k, body, 4)?;
                Request::Adopted { handle: f.u32() }
            }
            kind::LEASE_INTO => {
                let mut f = body_of(k, body, 4)?;
                Request::LeaseInto { target: f.u32() }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok((id, request))
    }
}

impl Reply {
    /// How many file descriptors must travel with this reply.
    pub fn fds(&self) -> usize {
        match self {
            Reply::Block { .. }
            | Reply::Listing { .. }
            | Reply::Table { .. }
            | Reply::Granted { .. }
            | Reply::Leased { .. }
            | Reply::Adopt { .. } => 1,
            _ => 0,
        }
    }

    /// A failure reply, with the reason cut to [`MAX_REASON`] bytes at a char boundary.
    pub fn failed(code: u32, reason: impl Into<String>) -> Reply {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Reply::Failed { code, reason }
    }

    /// Encodes the reply to request `id`.
    pub fn encode(&self, id: u32) -> Frame {
        match self {
            Reply::Hello {
                version,
                broker_pid,
                max_block,
            } => Frame::new(kind::R_HELLO, id)
                .u32(*version)
                .u32(*broker_pid)
                .u64(*max_block),
            Reply::Handle { handle } => Frame::new(kind::R_HANDLE, id).u32(*handle),
            Reply::Block { size } => Frame::new(kind::R_BLOCK, id).u64(*size),
            Reply::Done => Frame::new(kind::R_DONE, id),
            Reply::Listing { size } => Frame::new(kind::R_LISTING, id).u64(*size),
            Reply::Table { capacity } => Frame::new(kind::R_TABLE, id).u32(*capacity),
            Reply::Lease { start, count } => Frame::new(kind::R_LEASE, id).u32(*start).u32(*count),
            Reply::Granted { start, count, mask } => Frame::new(kind::R_GRANTED, id)
                .u32(*start)
                .u32(*count)
                .u64(*mask),
            Reply::Leased {
                channel,
                start,
                count,
                mask,
            } => Frame::new(kind::U_LEASED, id)
                .u32(*channel)
                .u32(*start)
                .u32(*count)
                .u32(0)
                .u64(*mask),
            Reply::Unleased { channel } => Frame::new(kind::U_UNLEASED, id).u32(*channel),
            Reply::Adopt { handle, size } => {
                Frame::new(kind::U_ADOPT, id).u32(*handle).u32(0).u64(*size)
            }
            Reply::Failed { code, reason } => {
                // `failed` bounds the reason; a Failed built by hand is cut here the same way.
                let Reply::Failed { reason, .. } = Reply::failed(*code, reason.as_str()) else {
                    unreachable!("Reply::failed always builds Failed")
                };
                let len = reason.len() as u32; // at most MAX_REASON
                let mut frame = Frame::new(kind::R_FAILED, id).u32(*code).u32(len);
                frame.put(reason.as_bytes());
                frame
            }
        }
    }

    /// Decodes one frame into the request id it answers and the reply.
    pub fn decode(bytes: &[u8]) -> Result<(u32, Reply), DecodeError> {
        let (k, id, body) = header(bytes)?;
        let reply = match k {
            kind::R_HELLO => {
                let mut f = body_of(k, body, 16)?;
                Reply::Hello {
                    version: f.u32(),
                    broker_pid: f.u32(),
                    max_block: f.u64(),
                }
            }
            kind::R_HANDLE => {
                let mut f = body_of(k, body, 4)?;
                Reply::Handle { handle: f.u32() }
            }
            kind::R_BLOCK => {
                let mut f = body_of(k, body, 8)?;
                Reply::Block { size: f.u64() }
            }
            kind::R_DONE => {
                body_of(k, body, 0)?;
                Reply::Done
            }
            kind::R_LISTING => {
                let mut f = body_of(k, body, 8)?;
                Reply::Listing { size: f.u64() }
            }
            kind::R_TABLE => {
                let mut f = body_of(k, body, 4)?;
                Reply::Table { capacity: f.u32() }
            }
            kind::R_LEASE => {
                let mut f = body_of(k, body, 8)?;
                Reply::Lease {
                    start: f.u32(),
                    count: f.u32(),
                }
            }
            kind::R_GRANTED => {
                let mut f = body_of(k, body, 16)?;
                let (start, count, mask) = (f.u32(), f.u32(), f.u64());
                lease_run(k, count, mask)?;
                Reply::Granted { start, count, mask }
            }
            kind::U_LEASED => {
                let mut f = body_of(k, body, 24)?;
                let (channel, start, count) = (f.u32(), f.u32(), f.u32());
                let (pad, mask) = (f.u32(), f.u64());
                if pad != 0 || id != UNASKED_ID || channel == 0 {
                    return Err(DecodeError::BadField {
                        kind: k,
                        what: "padding and request id must be 0, the channel not",
                    });
                }
                lease_run(k, count, mask)?;
                Reply::Leased {
                    channel,
                    start,
                    count,
                    mask,
                }
            }
            kind::U_UNLEASED => {
                let mut f = body_of(k, body, 4)?;
                let channel = f.u32();
                if id != UNASKED_ID || channel == 0 {
                    return Err(DecodeError::BadField {
                        kind: k,
                        what: "the request id must be 0, the channel not",
                    });
                }
                Reply::Unleased { channel }
            }
            kind::U_ADOPT => {
                let (handle, size) = unasked_block(k, id, body)?;
                Reply::Adopt { handle, size }
            }
            kind::R_FAILED => {
                if body.len() < 8 {
                    return Err(DecodeError::BadLength {
                        kind: k,
                        len: body.len(),
                    });
                }
                let (fixed, text) = body.split_at(8);
                let mut f = Fields(fixed);
                let code = f.u32();
                let len = f.u32() as usize;
                if len != text.len() || len > MAX_REASON {
                    return Err(DecodeError::BadLength {
                        kind: k,
                        len: body.len(),
                    });
                }
                let reason = String::from_utf8_lossy(text).into_owned();
                Reply::Failed { code, reason }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok((id, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello { version: VERSION },
            Request::Alloc {
                target: 42,
                size: u64::MAX,
            },
            Request::Lock {
                handle: 0x7fff_fffc,
                owner: 1,
                write: true,
            },
            Request::Lock {
                handle: 4,
                owner: u32::MAX,
                write: false,
            },
            Request::Free {
                handle: 8,
                owner: 9,
            },
            Request::Map {
                handle: 12,
                from: 13,
                to: 14,
            },
            Request::Attach,
            Request::Lease,
            Request::Adopted { handle: 0x104 },
            Request::LeaseInto { target: 77 },
        ]
    }

    fn id_for(r: &Request, id: u32) -> u32 {
        if r.is_notice() { UNASKED_ID } else { id }
    }

    #[test]
    fn requests_round_trip() {
        for (i, r) in requests().into_iter().enumerate() {
            let id = id_for(&r, i as u32 + 1);
            assert_eq!(Request::decode(r.encode(id).as_bytes()), Ok((id, r)));
        }
    }

    #[test]
    fn notices_and_only_notices_use_id_0() {
        let notice = Request::Adopted { handle: 0x104 };
        assert!(Request::decode(notice.encode(3).as_bytes()).is_err());
        assert!(Request::decode(Request::Attach.encode(UNASKED_ID).as_bytes()).is_err());
        let adopt = Reply::Adopt {
            handle: 0x104,
            size: 9,
        };
        assert_eq!(
            Reply::decode(adopt.encode(UNASKED_ID).as_bytes()),
            Ok((UNASKED_ID, adopt.clone()))
        );
        assert!(Reply::decode(adopt.encode(4).as_bytes()).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let replies = vec![
            Reply::Hello {
                version: 1,
                broker_pid: 77,
                max_block: 1 << 40,
            },
            Reply::Handle { handle: 0x40 },
            Reply::Block { size: 0 },
            Reply::Done,
            Reply::Listing { size: 12345 },
            Reply::Table { capacity: 65536 },
            Reply::Lease {
                start: 0x100,
                count: 64,
            },
            Reply::Granted {
                start: 0x100,
                count: 64,
                mask: u64::MAX,
            },
            Reply::failed(6, "no handle 0x40 in process 12"),
            Reply::failed(5, ""),
        ];
        for r in replies {
            assert_eq!(Reply::decode(r.encode(3).as_bytes()), Ok((3, r)));
        }
        for unasked in [
            Reply::Leased {
                channel: 3,
                start: 0x200,
                count: 8,
                mask: 0b1011_0111,
            },
            Reply::Unleased { channel: 3 },
        ] {
            let frame = unasked.encode(UNASKED_ID);
            assert_eq!(
                Reply::decode(frame.as_bytes()),
                Ok((UNASKED_ID, unasked.clone()))
            );
            assert!(Reply::decode(unasked.encode(9).as_bytes()).is_err());
        }
    }

    #[test]
    fn lease_runs_stay_within_their_count() {
        let over = Reply::Granted {
            start: 0x100,
            count: 8,
            mask: 1 << 8,
        };
        assert!(Reply::decode(over.encode(1).as_bytes()).is_err());
        let long = Reply::Granted {
            start: 0x100,
            count: 65,
            mask: 1,
        };
        assert!(Reply::decode(long.encode(1).as_bytes()).is_err());
        let values: Vec<u32> = lease_values(0x100, 0b101).collect();
        assert_eq!(values, [0x100, 0x108]);
    }

    #[test]
    fn deliveries_round_trip_and_nothing_else_is_one() {
        let delivery = Delivery {
            handle: 0x104,
            tag: 7,
            size: 1 << 33,
        };
        let frame = delivery.encode();
        assert_eq!(Delivery::decode(frame.as_bytes()), Ok(delivery));
        for cut in 0..frame.as_bytes().len() {
            assert!(Delivery::decode(&frame.as_bytes()[..cut]).is_err());
        }
        assert!(Delivery::decode(Reply::Done.encode(0).as_bytes()).is_err());
        assert!(Request::decode(frame.as_bytes()).is_err());
        assert!(Reply::decode(frame.as_bytes()).is_err());
        assert!(Returned::decode(frame.as_bytes()).is_err());
    }

    #[test]
    fn returns_round_trip_and_are_no_delivery() {
        let returned = Returned {
            handle: 0x108,
            tag: u32::MAX,
        };
        let frame = returned.encode();
        assert_eq!(Returned::decode(frame.as_bytes()), Ok(returned));
        for cut in 0..frame.as_bytes().len() {
            assert!(Returned::decode(&frame.as_bytes()[..cut]).is_err());
        }
        assert!(Delivery::decode(frame.as_bytes()).is_err());
        assert!(Request::decode(frame.as_bytes()).is_err());
    }

    #[test]
    fn orphans_round_trip_and_are_nothing_else() {
        let orphaned = Orphaned { handle: 0x10c };
        let frame = orphaned.encode();
        assert_eq!(Orphaned::decode(frame.as_bytes()), Ok(orphaned));
        for cut in 0..frame.as_bytes().len() {
            assert!(Orphaned::decode(&frame.as_bytes()[..cut]).is_err());
        }
        assert!(Returned::decode(frame.as_bytes()).is_err());
        assert!(Delivery::decode(frame.as_bytes()).is_err());
        assert!(Request::decode(frame.as_bytes()).is_err());
        assert!(Reply::decode(frame.as_bytes()).is_err());
        let returned = Returned {
            handle: 0x10c,
            tag: 0,
        }
        .encode();
        assert!(Orphaned::decode(returned.as_bytes()).is_err());
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_FRAME);
        let Reply::Failed { reason, .. } = Reply::failed(5, long) else {
            panic!("not Failed")
        };
        assert!(reason.len() <= MAX_REASON && reason.len() >= MAX_REASON - 1);
        let frame = Reply::Failed {
            code: 5,
            reason: "x".repeat(1000),
        }
        .encode(1);
        assert!(frame.as_bytes().len() <= MAX_FRAME);
        assert!(Reply::decode(frame.as_bytes()).is_ok());
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for r in requests() {
            let frame = r.encode(id_for(&r, 5));
            let bytes = frame.as_bytes();
            for cut in 0..bytes.len() {
                assert!(
                    Request::decode(&bytes[..cut]).is_err(),
                    "{r:?} cut at {cut}"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(Request::decode(&longer).is_err(), "{r:?} extended");
        }
    }

    #[test]
    fn bad_fields_are_rejected() {
        let mut zero_id = Request::Free {
            handle: 4,
            owner: 1,
        }
        .encode(1)
        .as_bytes()
        .to_vec();
        zero_id[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Request::decode(&zero_id),
            Err(DecodeError::BadField { .. })
        ));

        let mut flags = Request::Free {
            handle: 4,
            owner: 1,
        }
        .encode(1)
        .as_bytes()
        .to_vec();
        flags[2] = 1;
        assert!(matches!(
            Request::decode(&flags),
            Err(DecodeError::BadField { .. })
        ));

        let mut write = Request::Lock {
            handle: 4,
            owner: 1,
            write: true,
        }
        .encode(1)
        .as_bytes()
        .to_vec();
        write[16] = 2;
        assert!(matches!(
            Request::decode(&write),
            Err(DecodeError::BadField { .. })
        ));

        let mut unknown = Request::Free {
            handle: 4,
            owner: 1,
        }
        .encode(1)
        .as_bytes()
        .to_vec();
        unknown[0] = 0x77;
        assert_eq!(
            Request::decode(&unknown),
            Err(DecodeError::UnknownKind(0x0077))
        );
    }

    #[test]
    fn replies_are_not_requests() {
        assert!(Request::decode(Reply::Done.encode(1).as_bytes()).is_err());
        assert!(
            Reply::decode(
                Request::Free {
                    handle: 4,
                    owner: 1
                }
                .encode(1)
                .as_bytes()
            )
            .is_err()
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz target goes further.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % (MAX_FRAME as u64 + 2)) as usize;
            let mut bytes = vec![0u8; len];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (state >> (i % 8 * 8)) as u8 ^ i as u8;
            }
            if len >= 2 {
                bytes[0] = (state % 6) as u8;
                bytes[1] = if state & 1 == 0 { 0 } else { 0x80 };
            }
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
