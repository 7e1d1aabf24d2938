//! What both sides of a hand-off share: the error type, the control-channel frames, the checksum
//! and page touching, the test data.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::floor;

/// Every error of the benchmark: the OS's, the libraries', or a message.
pub type Error = Box<dyn std::error::Error>;

/// The benchmark's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The page size used to touch every page of a block.
pub const PAGE: usize = 4096;

/// What a frame on the control channel asks the peer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exit.
    Quit,
    /// Receive one block, read every byte, acknowledge with the checksum.
    Work,
    /// Set up (ipc-channel: connect to the one-shot server whose name follows).
    Setup,
}

/// A control frame from A to B: 16 bytes, little-endian (`size`, `arg`, `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The block's size in bytes (for `Setup`: unused).
    pub size: u64,
    /// A handle (shalloc) or the length of a name that follows the frame (shared_memory, ipc-channel
    /// setup).
    pub arg: u32,
    /// What to do.
    pub kind: Kind,
}

/// The length of an encoded [`Header`].
pub const HEADER_LEN: usize = 16;

impl Header {
    /// A `Work` frame.
    pub fn work(size: usize, arg: u32) -> Header {
        Header {
            size: size as u64,
            arg,
            kind: Kind::Work,
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let kind: u32 = match self.kind {
            Kind::Quit => 0,
            Kind::Work => 1,
            Kind::Setup => 2,
        };
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..12].copy_from_slice(&self.arg.to_le_bytes());
        out[12..].copy_from_slice(&kind.to_le_bytes());
        out
    }

    /// Reads a frame back.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header> {
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[..8]);
        let mut arg = [0u8; 4];
        arg.copy_from_slice(&bytes[8..12]);
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&bytes[12..]);
        let kind = match u32::from_le_bytes(kind) {
            0 => Kind::Quit,
            1 => Kind::Work,
            2 => Kind::Setup,
            other => return Err(format!("unknown frame kind {other}").into()),
        };
        Ok(Header {
            size: u64::from_le_bytes(size),
            arg: u32::from_le_bytes(arg),
            kind,
        })
    }

    /// The size as a `usize`.
    pub fn len(&self) -> Result<usize> {
        usize::try_from(self.size).map_err(|_| "block size does not fit in usize".into())
    }
}

/// Receives one frame, with the descriptor that came along with it if any. `None` at end of file
/// (the other side went away).
pub fn recv_header(ctl: &UnixStream) -> Result<Option<(Header, Option<OwnedFd>)>> {
    let mut buf = [0u8; HEADER_LEN];
    let (got, fd) = floor::recv_with_fd(ctl.as_fd(), &mut buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        let mut rest = ctl;
        rest.read_exact(&mut buf[got..])?;
    }
    Ok(Some((Header::decode(&buf)?, fd)))
}

/// Reads the `len` bytes of a name that follows a frame.
pub fn read_name(mut ctl: &UnixStream, len: u32) -> Result<String> {
    let mut name = vec![0u8; len as usize];
    ctl.read_exact(&mut name)?;
    String::from_utf8(name).map_err(|_| "a name on the control channel is not UTF-8".into())
}

/// Sends an 8-byte acknowledgement (a checksum, or 0 for "ready").
pub fn send_ack(mut ctl: &UnixStream, value: u64) -> Result<()> {
    ctl.write_all(&value.to_le_bytes())?;
    Ok(())
}

/// Waits for an 8-byte acknowledgement.
pub fn recv_ack(mut ctl: &UnixStream) -> Result<u64> {
    let mut buf = [0u8; 8];
    ctl.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

/// A checksum that reads every byte: the wrapping sum of the little-endian 64-bit words, then of
/// the remaining bytes. Cheap enough to run at memory speed (it vectorises).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        sum = sum.wrapping_add(u64::from_le_bytes(word));
    }
    for byte in chunks.remainder() {
        sum = sum.wrapping_add(u64::from(*byte));
    }
    sum
}

/// Reads one byte of every page of `len` bytes at `ptr`, so that each page is mapped in.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
pub unsafe fn touch_pages(ptr: *const u8, len: usize) -> u64 {
    let mut sum = 0u64;
    let mut offset = 0;
    while offset < len {
        // SAFETY: offset < len, and the caller promises len readable bytes.
        sum = sum.wrapping_add(u64::from(unsafe { ptr.add(offset).read_volatile() }));
        offset += PAGE;
    }
    sum
}

/// `len` bytes of pseudo-random data (xorshift), the same on every run.
pub fn test_data(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in out.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

/// A child process the bench started: waited for with a deadline, and killed by its pid if it has
/// not exited when dropped (std keeps it as our unreaped child until then, so the pid is ours).
pub struct Spawned {
    child: std::process::Child,
    exited: bool,
}

impl Spawned {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Spawned {
        Spawned {
            child,
            exited: false,
        }
    }

    /// Whether the child was already waited for.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// Waits up to `limit` for the child to exit successfully; kills it when it overruns.
    /// `what` names it in errors.
    pub fn finish(&mut self, what: &str, limit: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{what} exited with {status}").into())
                };
            }
            if std::time::Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                self.exited = true;
                return Err(format!("{what} did not exit; killed").into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header::work(1 << 20, 7);
        assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
    }

    #[test]
    fn checksum_sees_every_byte() {
        let data = test_data(1003);
        let mut changed = data.clone();
        changed[1001] ^= 1;
        assert_ne!(checksum(&data), checksum(&changed));
    }
}
