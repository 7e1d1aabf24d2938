//! Channels: how a process puts blocks into another process's table without a round trip.
//!
//! When process A asks (`LeaseInto`), the broker reserves a few handle values of B's table for A
//! (their slots become [`State::Reserved`](crate::segment::State::Reserved), tagged with the
//! channel's number) and makes a channel: a `SOCK_SEQPACKET` socket pair whose sending end goes to
//! A and whose receiving end goes to B ([`Reply::Leased`](crate::wire::Reply::Leased), sent before
//! A's answer) and stays with the broker too. To put a block into B's table, A checks that B is
//! still the process it leased from (its pidfd), takes a value, and sends one
//! [`Delivery`] with the sealed memfd. The call returns once `sendmsg` has: the block is then in
//! the channel, where both B and the broker can find it.
//!
//! - **Either reader takes it.** B takes blocks off the channel on its next call that meets a
//!   reserved slot; the broker takes them before it serves any request that names a reserved
//!   value of that channel (or lists the tables). Each frame goes to exactly one reader, and
//!   whoever got it swaps the slot from `Reserved` to `Live` (B) or `Pending` (the broker).
//! - **Nothing is trusted.** A receiver checks each memfd as the broker checks an `Alloc`
//!   ([`crate::block::check`]) and swaps only a slot reserved for *this* channel: a sender can
//!   fill only the values it was leased, and a frame it makes up is dropped.
//! - **Blocks one way, returns the other.** Only A sends blocks. B sends back only [`Returned`]
//!   frames, without descriptors, naming a block by its handle and the tag A gave its delivery (a
//!   handle value may be leased to A again while B still maps its earlier block): a block A
//!   delivered is closed in B's table, unmapped in B, and
//!   never left B, so A may recycle it for B (see the client's block pool). A believes a return
//!   only for a block it lent to B, and reuses it only for B, so a lie from B shows B nothing of
//!   anyone else's; B's frames queue on A's end, which only A reads, at most a socket buffer's
//!   worth (a return that does not fit is dropped: the block is then not recycled).
//! - **A receiver that exits.** Its views are gone with it. Before the broker drops its table, it
//!   tells A, on B's end, which blocks A delivered were still open there and clean ([`Orphaned`]:
//!   never reopened by the broker for anyone, and B never forked); A believes that only once B's
//!   pidfd says it exited, and may then reuse those blocks for its own table.
//! - **Ending.** A channel lives as long as A's connection. When it closes, the broker takes what
//!   is left on the channel, empties A's unused reservations and tells B
//!   ([`Reply::Unleased`](crate::wire::Reply::Unleased)).

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::transport::{self, RecvBuf, RecvError};
use crate::wire::{Delivery, MAX_FRAME, Orphaned, Returned};

/// A new channel: (sending end, receiving end).
pub fn pair() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// Tells the sender, from the receiving end, that the block delivered under `handle` with `tag`
/// came back: `false` when it could not be sent now (the sender does not read, or is gone).
pub fn give_back(channel: BorrowedFd<'_>, handle: u32, tag: u32) -> bool {
    transport::send(channel, &Returned { handle, tag }.encode(), None, true).is_ok()
}

/// Tells the sender, from the receiving end the broker keeps, that the receiver exited while the
/// block of `handle` was open in its table and clean (see [`Orphaned`]): `false` when it could not
/// be sent now.
pub fn orphan(channel: BorrowedFd<'_>, handle: u32) -> bool {
    transport::send(channel, &Orphaned { handle }.encode(), None, true).is_ok()
}

/// What one look at a channel's sending end found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Back {
    /// A return from the receiver.
    Returned(Returned),
    /// The broker's word that the receiver exited with this block clean.
    Orphaned(u32),
    /// A frame that is neither (dropped, descriptors closed).
    Other,
    /// Nothing is waiting now.
    Empty,
    /// Every holder of the receiving end is gone and nothing is left.
    Finished,
}

/// Reads one frame off the sending end without waiting.
pub fn take_back(channel: BorrowedFd<'_>) -> Back {
    let mut buf: RecvBuf = [0; MAX_FRAME + 1];
    match transport::recv(channel, &mut buf, true) {
        Ok(received) if received.fds.is_empty() => {
            let frame = &buf[..received.len];
            match (Returned::decode(frame), Orphaned::decode(frame)) {
                (Ok(returned), _) => Back::Returned(returned),
                (_, Ok(orphaned)) => Back::Orphaned(orphaned.handle),
                _ => Back::Other,
            }
        }
        Ok(_) | Err(RecvError::Oversized(_)) => Back::Other,
        Err(RecvError::WouldBlock) => Back::Empty,
        Err(RecvError::Closed | RecvError::Io(_)) => Back::Finished,
    }
}

/// Sends one block without waiting: `Err(AGAIN)` when the channel is full, `Err(PIPE)` (or
/// `CONNREFUSED`) when no reader is left.
pub fn send(channel: BorrowedFd<'_>, delivery: Delivery, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    transport::send(channel, &delivery.encode(), Some(fd), true)
}

/// What one look at a channel found.
#[derive(Debug)]
pub enum Taken {
    /// A block, not yet checked.
    Block(Delivery, OwnedFd),
    /// A frame that is not a delivery with exactly one descriptor (dropped, descriptors closed).
    Malformed,
    /// Nothing is waiting now.
    Empty,
    /// Every sender is gone and nothing is left.
    Finished,
}

/// Takes one frame off `channel` without waiting.
pub fn take(channel: BorrowedFd<'_>) -> Taken {
    let mut buf: RecvBuf = [0; MAX_FRAME + 1];
    match transport::recv(channel, &mut buf, true) {
        Ok(mut received) => match Delivery::decode(&buf[..received.len]) {
            Ok(delivery) if received.fds.len() == 1 => match received.fds.pop() {
                Some(fd) => Taken::Block(delivery, fd),
                None => Taken::Malformed,
            },
            _ => Taken::Malformed,
        },
        Err(RecvError::WouldBlock) => Taken::Empty,
        Err(RecvError::Closed) => Taken::Finished,
        Err(RecvError::Oversized(_)) => Taken::Malformed,
        // Any other failure of a local socket we hold: nothing more will come of it.
        Err(RecvError::Io(_)) => Taken::Finished,
    }
}
