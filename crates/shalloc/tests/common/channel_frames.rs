//! Writing on a channel's receiving end by hand, as a hostile lessee would: finding the end, and
//! sending raw frames (shared by the recycling suites; the including test declares `support`).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

/// The receiving end of the one channel into this process: its `SOCK_SEQPACKET` socket whose peer
/// has no address (a socket pair's end; the broker connection's peer is the broker's socket path).
pub fn channel_end() -> BorrowedFd<'static> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            link.to_str()?.starts_with("socket:").then_some(())?;
            e.file_name().to_str()?.parse().ok()
        })
        .collect();
    let ends: Vec<BorrowedFd<'static>> = fds
        .into_iter()
        // SAFETY: the descriptor is open (just listed) and this process never closes its sockets
        // while the worker uses the result (the broker connection and channels live as long as
        // the worker's shalloc client, which the worker never drops).
        .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .filter(|fd| {
            rustix::net::sockopt::socket_type(fd) == Ok(rustix::net::SocketType::SEQPACKET)
        })
        .filter(|fd| {
            let peer = rustix::net::getpeername(fd).ok().flatten();
            let path = peer.and_then(|a| SocketAddrUnix::try_from(a).ok()?.path().map(|_| ()));
            path.is_none()
        })
        .collect();
    assert_eq!(
        ends.len(),
        1,
        "expected exactly one channel end: {:?}",
        crate::support::fd_targets("self")
    );
    ends[0]
}

/// The bytes sent on `sock` that its peer has not read yet (`SIOCOUTQ`).
pub fn outq(sock: BorrowedFd<'_>) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::TIOCOUTQ,
            &mut n,
        )
    };
    assert_eq!(r, 0, "ioctl(SIOCOUTQ): {}", std::io::Error::last_os_error());
    u64::try_from(n).unwrap()
}

/// Sends one record of `bytes` with `fds` attached, without waiting: whether it went (`false`
/// when the channel is full).
pub fn send_frame(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> bool {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    match rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags) {
        Ok(n) => {
            assert_eq!(n, bytes.len());
            true
        }
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS) => false,
        Err(e) => panic!("forging a frame: {e}"),
    }
}
