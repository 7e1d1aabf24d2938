//! The floor: what a hand-off costs in plain system calls, with no broker. A sealed memfd filled
//! with `pwrite`, mapped with `mmap`, its descriptor passed with `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::common::Result;

/// The seals shalloc puts on its blocks: no shrinking, no growing, no more seals.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A new memfd holding `data`, sealed as shalloc seals its blocks.
pub fn sealed_memfd(data: &[u8]) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "shalloc-bench",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(&fd, &data[done..], done as u64) {
            Ok(0) => return Err("pwrite wrote nothing".into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// A shared read/write mapping of a descriptor, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes (at least one) of `fd`, shared, read/write.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping> {
        if len == 0 {
            return Err("cannot map 0 bytes".into());
        }
        // SAFETY: a fresh mapping at an address the kernel picks overlaps nothing of ours.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned NULL")?;
        Ok(Mapping { ptr, len })
    }

    /// The first mapped byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The mapped bytes.
    ///
    /// # Safety
    /// Nobody may write the mapped file while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping covers len bytes while self lives; the caller rules out writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this mapping is ours alone and nothing borrows it any more (slices borrow self).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Sends `bytes` on a stream socket with `fd` attached (`SCM_RIGHTS`).
pub fn send_with_fd(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("no room for the descriptor".into());
    }
    let sent = loop {
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    write_all(socket, &bytes[sent..])
}

/// Receives up to `buf.len()` bytes from a stream socket, and the descriptor that came with them,
/// if any. Returns 0 bytes at end of file.
pub fn recv_with_fd(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg.bytes,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                // Keep the first; any other closes here.
                fd.get_or_insert(received);
            }
        }
    }
    Ok((got, fd))
}

/// Writes all of `bytes`.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err("write wrote nothing".into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `head` then all of `body`, gathering both into one `writev` while `head` lasts.
pub fn write_two(fd: BorrowedFd<'_>, head: &[u8], body: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < head.len() {
        match rustix::io::writev(fd, &[IoSlice::new(&head[done..]), IoSlice::new(body)]) {
            Ok(0) => return Err("writev wrote nothing".into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    write_all(fd, &body[done - head.len()..])
}

/// One `cycle` on the floor: memfd, `pwrite`, seals, `mmap`, touch every page, `munmap`, close.
pub fn cycle(data: &[u8]) -> Result<u64> {
    let fd = sealed_memfd(data)?;
    let map = Mapping::new(fd.as_fd(), data.len())?;
    // SAFETY: the mapping is valid for data.len() bytes while `map` lives.
    let sum = unsafe { crate::common::touch_pages(map.as_ptr(), data.len()) };
    drop(map);
    drop(fd);
    Ok(sum)
}
