//! One frame, with at most one file descriptor, over a `SOCK_SEQPACKET` Unix socket.
//!
//! `SOCK_SEQPACKET` keeps record boundaries, so one `sendmsg` is one frame and one `recvmsg` reads
//! exactly one: no framing layer, no partial reads. Descriptors travel as `SCM_RIGHTS` and arrive
//! close-on-exec (`MSG_CMSG_CLOEXEC`), so no fd a peer sends can leak into a program we exec.
//! Sends use `MSG_NOSIGNAL`: a peer that went away is an `EPIPE`, never a `SIGPIPE`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::wire::{Frame, MAX_FRAME};

/// The most descriptors a receiver makes room for. A frame carries at most one; room for a few
/// more lets a receiver see (and close) the extras a hostile peer sends, instead of losing them to
/// `MSG_CTRUNC`.
pub const MAX_FDS: usize = 4;

/// A receive buffer one byte larger than the largest frame, so an oversized frame is detectable.
pub type RecvBuf = [u8; MAX_FRAME + 1];

/// What one receive produced.
#[derive(Debug)]
pub struct Received {
    /// The frame's length in the buffer.
    pub len: usize,
    /// The descriptors that came with it, already owned (they close when dropped).
    pub fds: Vec<OwnedFd>,
}

/// Why a receive produced no frame.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// Nothing to read now (only with `nonblocking`).
    #[error("no frame is waiting")]
    WouldBlock,
    /// The frame was larger than [`MAX_FRAME`], or carried more descriptors than [`MAX_FDS`].
    #[error("oversized frame ({0})")]
    Oversized(&'static str),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] Errno),
}

/// Sends one frame, with `fd` attached when given.
///
/// With `nonblocking`, a full socket buffer is `Err(Errno::AGAIN)` instead of a wait.
pub fn send(
    sock: BorrowedFd<'_>,
    frame: &Frame,
    fd: Option<BorrowedFd<'_>>,
    nonblocking: bool,
) -> Result<(), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        // The buffer is sized for exactly one descriptor, so the push always fits.
        let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
        debug_assert!(pushed);
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let bytes = frame.as_bytes();
    loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // A seqpacket send is all or nothing; a short count would be a kernel bug.
            Ok(_) => return Err(Errno::IO),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one frame into `buf`, with any descriptors that came with it.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut RecvBuf,
    nonblocking: bool,
) -> Result<Received, RecvError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(RecvError::WouldBlock),
            Err(Errno::CONNRESET) => return Err(RecvError::Closed),
            Err(e) => return Err(RecvError::Io(e)),
        }
    };
    // Take ownership of every descriptor first, so that they are closed whatever happens next.
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
        return Err(RecvError::Oversized("too many descriptors"));
    }
    if msg.bytes == 0 && fds.is_empty() {
        // A zero-length seqpacket record is how a peer's close reads; no valid frame is empty.
        return Err(RecvError::Closed);
    }
    if msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > MAX_FRAME {
        return Err(RecvError::Oversized("frame too long"));
    }
    Ok(Received {
        len: msg.bytes,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reply, Request};
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair")
    }

    #[test]
    fn a_frame_and_a_descriptor_cross() {
        let (a, b) = pair();
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let frame = Reply::Block { size: 7 }.encode(9);
        send(a.as_fd(), &frame, Some(memfd.as_fd()), false).expect("send");
        let mut buf = [0u8; MAX_FRAME + 1];
        let got = recv(b.as_fd(), &mut buf, false).expect("recv");
        assert_eq!(
            Reply::decode(&buf[..got.len]),
            Ok((9, Reply::Block { size: 7 }))
        );
        assert_eq!(got.fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&got.fds[0]).expect("getfd");
        assert!(
            flags.contains(rustix::io::FdFlags::CLOEXEC),
            "received fds are close-on-exec"
        );
    }

    #[test]
    fn oversized_frames_and_closed_peers_are_reported() {
        let (a, b) = pair();
        let big = [1u8; MAX_FRAME + 10];
        rustix::net::send(&a, &big, SendFlags::empty()).expect("send");
        let mut buf = [0u8; MAX_FRAME + 1];
        assert!(matches!(
            recv(b.as_fd(), &mut buf, false),
            Err(RecvError::Oversized(_))
        ));
        assert!(matches!(
            recv(b.as_fd(), &mut buf, true),
            Err(RecvError::WouldBlock)
        ));
        send(
            a.as_fd(),
            &Request::Hello { version: 1 }.encode(1),
            None,
            false,
        )
        .expect("send");
        drop(a);
        assert!(
            recv(b.as_fd(), &mut buf, false).is_ok(),
            "a frame sent before close still arrives"
        );
        assert!(matches!(
            recv(b.as_fd(), &mut buf, false),
            Err(RecvError::Closed)
        ));
    }
}
