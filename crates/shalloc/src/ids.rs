//! Process ids and handle values: the two numbers that travel together between processes.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// A process id, naming the process whose handle table a call is about.
///
/// Any `u32` can be made into a `Pid`; one that names no process makes calls fail with
/// [`Error::NoSuchProcess`](crate::Error::NoSuchProcess). Ids Linux cannot have (0, or 2^31 and
/// above) are rejected before they reach any system call, where they could mean a process group.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(u32);

impl Pid {
    /// The calling process. Costs no system call after the first (a forked child finds out
    /// its own id afresh).
    pub fn current() -> Pid {
        Pid(crate::own_pid::get())
    }

    /// The process with id `raw`.
    pub const fn from_raw(raw: u32) -> Pid {
        Pid(raw)
    }

    /// The id as a number.
    pub const fn as_raw(self) -> u32 {
        self.0
    }

    /// Whether Linux could ever give a process this id (1 ..= 2^31 - 1).
    pub(crate) fn is_possible(self) -> bool {
        self.0 != 0 && self.0 <= i32::MAX as u32
    }
}

impl From<u32> for Pid {
    fn from(raw: u32) -> Pid {
        Pid(raw)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.0)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A handle: names one block in one process's table. Never 0, always below 2^31.
///
/// A handle means something only together with the id of the process whose table holds it; send
/// both. It prints as `0x`-prefixed hex and parses from hex (`0x…`) or decimal.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(NonZeroU32);

impl Handle {
    /// The handle with value `raw`; `None` for 0, which is never a handle.
    pub const fn from_raw(raw: u32) -> Option<Handle> {
        match NonZeroU32::new(raw) {
            Some(v) => Some(Handle(v)),
            None => None,
        }
    }

    /// The value as a number.
    pub const fn as_raw(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({:#x})", self.0)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a string is not a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a handle: {0:?} (expected a nonzero number, decimal or 0x-hex, below 2^32)")]
pub struct ParseHandleError(String);

impl FromStr for Handle {
    type Err = ParseHandleError;

    fn from_str(s: &str) -> Result<Handle, ParseHandleError> {
        let t = s.trim();
        let value = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse::<u32>(),
        };
        value
            .ok()
            .and_then(Handle::from_raw)
            .ok_or_else(|| ParseHandleError(s.to_string()))
    }
}

/// A handle together with the id of the process whose table holds it: everything another process
/// needs to lock the block, in one value to put into any message, command line or environment
/// variable.
///
/// Its text form is `HANDLE@PID` (`0x2c@12345`; the handle also parses in decimal); its binary form
/// is 8 bytes, the handle then the pid, each a little-endian `u32`. Both round-trip.
///
/// ```
/// use shalloc::{Handle, Pid, Token};
/// let token = Token::new(Handle::from_raw(0x2c).unwrap(), Pid::from_raw(12345));
/// assert_eq!(token.to_string(), "0x2c@12345");
/// assert_eq!("0x2c@12345".parse::<Token>(), Ok(token));
/// assert_eq!(Token::from_bytes(token.to_bytes()), Some(token));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    /// The handle.
    pub handle: Handle,
    /// The process whose table holds it.
    pub owner: Pid,
}

impl Token {
    /// The token for `handle` in `owner`'s table.
    pub const fn new(handle: Handle, owner: Pid) -> Token {
        Token { handle, owner }
    }

    /// The 8-byte form: the handle, then the pid, each a little-endian `u32`.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.handle.as_raw().to_le_bytes());
        out[4..].copy_from_slice(&self.owner.as_raw().to_le_bytes());
        out
    }

    /// Parses the 8-byte form; `None` when the handle is 0.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Token> {
        let handle = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let owner = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        Some(Token {
            handle: Handle::from_raw(handle)?,
            owner: Pid::from_raw(owner),
        })
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.handle, self.owner)
    }
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a token: {0:?} (expected HANDLE@PID, such as 0x2c@12345)")]
pub struct ParseTokenError(String);

impl FromStr for Token {
    type Err = ParseTokenError;

    fn from_str(s: &str) -> Result<Token, ParseTokenError> {
        let bad = || ParseTokenError(s.to_string());
        let (handle, pid) = s.trim().split_once('@').ok_or_else(bad)?;
        let handle = handle.parse::<Handle>().map_err(|_| bad())?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let owner = pid.parse::<u32>().map_err(|_| bad())?;
        Ok(Token {
            handle,
            owner: Pid::from_raw(owner),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_and_parse() {
        let h = Handle::from_raw(0x2c).expect("nonzero");
        assert_eq!(h.to_string(), "0x2c");
        assert_eq!("0x2c".parse::<Handle>(), Ok(h));
        assert_eq!("44".parse::<Handle>(), Ok(h));
        assert!("0".parse::<Handle>().is_err());
        assert!("0x".parse::<Handle>().is_err());
        assert!("-4".parse::<Handle>().is_err());
        assert!("0x100000000".parse::<Handle>().is_err());
    }

    #[test]
    fn tokens_round_trip_in_text_and_bytes() {
        let t = Token::new(
            Handle::from_raw(0x2c).expect("nonzero"),
            Pid::from_raw(12345),
        );
        assert_eq!(t.to_string(), "0x2c@12345");
        assert_eq!("44@12345".parse::<Token>(), Ok(t));
        assert_eq!(t.to_bytes(), [0x2c, 0, 0, 0, 0x39, 0x30, 0, 0]);
        assert_eq!(Token::from_bytes(t.to_bytes()), Some(t));
        assert_eq!(Token::from_bytes([0; 8]), None);
        for bad in [
            "0x2c",
            "@12",
            "0x2c@",
            "0x2c@-1",
            "0x2c@+1",
            "0@1",
            "0x2c@1@2",
            "0x2c@99999999999",
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }

    #[test]
    fn impossible_pids_are_recognised() {
        assert!(!Pid::from_raw(0).is_possible());
        assert!(!Pid::from_raw(1 << 31).is_possible());
        assert!(!Pid::from_raw(u32::MAX).is_possible());
        assert!(Pid::from_raw(1).is_possible());
        assert!(Pid::current().is_possible());
    }
}
